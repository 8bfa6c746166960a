"""The camera backend interface of the PVCAM camera device, and the real backend on ``pyvcam``.

Why a backend interface: the Photometrics SDK (PVCAM) is a vendor C library that cannot be
installed on most machines that run daqbridge (CI, laptops, these servers). The camera device
talks to a :class:`CameraBackend`; :class:`PyVcamBackend` drives a real camera through
``pyvcam`` where the SDK exists, and ``daqbridge.sim.pvcam.SimulatedCameraBackend`` reproduces
the behaviour that matters to a device (frame timing, ring-buffer stall, status values, failed
readouts) everywhere else.

Device code must not import ``daqbridge.sim`` (import-linter contract), so :func:`load_backend`
only builds the real backend; the runtime builds the simulated one from the profile and passes
it to the device.

Vocabulary follows PVCAM: serial = columns (x, ``s1..s2``, ``sbin``), parallel = rows (y,
``p1..p2``, ``pbin``); exposure values are integers in units of the exposure resolution.
"""

from __future__ import annotations

import abc
import enum
import math
import numbers
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from daqbridge.errors import ConfigError, InstrumentError, InstrumentFault, ValueRejected

__all__ = [
    "EXPOSURE_RESOLUTIONS",
    "AcquisitionSetup",
    "CameraBackend",
    "ExposureMode",
    "ExposureResolution",
    "Frame",
    "ImageStatus",
    "PyVcamBackend",
    "Roi",
    "load_backend",
]

ExposureResolution = Literal["ms", "us", "s"]

EXPOSURE_RESOLUTIONS: dict[str, float] = {"ms": 1e-3, "us": 1e-6, "s": 1.0}
"""Seconds per exposure unit for each exposure resolution PVCAM offers."""

_PVCAM_EXP_RES = {"ms": 0, "us": 1, "s": 2}  # EXP_RES_ONE_MILLISEC / _MICROSEC / _SEC
_MAX_SEQUENCE_FRAMES = 65535  # pl_exp_setup_seq takes an uns16 frame count
_MAX_EXPOSURE_UNITS = 2**32 - 1  # exposure is an uns32 in units of the resolution


class ExposureMode(enum.IntEnum):
    """PVCAM exposure (trigger) modes: the classic ones and the extended ones of newer cameras."""

    TIMED = 0
    STROBED = 1
    BULB = 2
    TRIGGER_FIRST = 3
    FLASH = 4
    VARIABLE_TIMED = 5
    INT_STROBE = 6
    EXT_TRIG_INTERNAL = 1792
    TRIG_FIRST = 2048
    EDGE_RISING = 2304
    LEVEL = 2560
    SOFTWARE_FIRST = 2816
    SOFTWARE_EDGE = 3072


class ImageStatus(enum.IntEnum):
    """PVCAM image status: every value ``pl_exp_check_status`` can report (PL_IMAGE_STATUSES).

    pvcam.h's names are all members (READOUT_NOT_ACTIVE is NOT_ACTIVE's alias, FRAME_AVAILABLE
    READOUT_COMPLETE's: "all frames of a sequence" or "at least one frame in a live ring").
    ACQUISITION_IN_PROGRESS is what PVCAM 2.x drivers report while an acquisition runs (between
    frames); PVCAM 3.x's header calls it deprecated and unused, but a camera on an older driver
    still sends it, so it is a status like the others, never an error. MAX_CAMERA_STATUS (6)
    only marks the end of the C enum; no camera reports it, so it is not a member.
    """

    NOT_ACTIVE = 0
    READOUT_NOT_ACTIVE = 0
    EXPOSURE_IN_PROGRESS = 1
    READOUT_IN_PROGRESS = 2
    READOUT_COMPLETE = 3
    FRAME_AVAILABLE = 3
    READOUT_FAILED = 4
    ACQUISITION_IN_PROGRESS = 5


def _text(exc: BaseException) -> str:
    """An SDK message without its own final period, to end a daqbridge sentence."""
    return str(exc).strip().rstrip(".")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Roi:
    """A sensor region in PVCAM coordinates, inclusive: columns ``s1..s2``, rows ``p1..p2``.

    The frame it produces is ``w = (s2-s1+1)/sbin`` by ``h = (p2-p1+1)/pbin`` pixels.
    """

    s1: int
    s2: int
    p1: int
    p2: int

    def __post_init__(self) -> None:
        for field in ("s1", "s2", "p1", "p2"):
            value = getattr(self, field)
            if not _is_int(value):
                raise ValueRejected(
                    f"ROI {field} must be an integer pixel index, got {value!r}.",
                    value=value,
                    fix="give pixel indices as integers (0-based, inclusive).",
                )
            object.__setattr__(self, field, int(value))

    @classmethod
    def full(cls, sensor_size: tuple[int, int]) -> Roi:
        """The whole sensor of ``sensor_size = (width, height)``."""
        width, height = sensor_size
        return cls(0, width - 1, 0, height - 1)

    @property
    def width(self) -> int:
        """Columns covered on the sensor (before binning)."""
        return self.s2 - self.s1 + 1

    @property
    def height(self) -> int:
        """Rows covered on the sensor (before binning)."""
        return self.p2 - self.p1 + 1

    def frame_shape(self, binning: tuple[int, int] = (1, 1)) -> tuple[int, int]:
        """Shape ``(h, w)`` of the frames (numpy order: rows first)."""
        sbin, pbin = binning
        return self.height // pbin, self.width // sbin

    def check(
        self,
        sensor_size: tuple[int, int],
        binning: tuple[int, int] = (1, 1),
        *,
        camera: str,
        resource: str | None = None,
    ) -> None:
        """Refuse a region the camera cannot read, naming the camera and its limits.

        A region that is not a whole number of bins is refused rather than clipped (PVCAM
        silently drops the partial bin, so the frame would be smaller than the caller computed).
        """
        width, height = sensor_size
        sbin, pbin = binning
        limits = f"columns 0..{width - 1}, rows 0..{height - 1}"
        if not (0 <= self.s1 <= self.s2 < width and 0 <= self.p1 <= self.p2 < height):
            raise ValueRejected(
                f"ROI s1={self.s1}, s2={self.s2}, p1={self.p1}, p2={self.p2} is outside the "
                f"{width} x {height} sensor or reversed (valid: {limits}, s1 <= s2, p1 <= p2).",
                value=self,
                limit=(width, height),
                instrument=camera,
                resource=resource,
                fix=f"choose a region inside {limits}.",
            )
        for axis, span, nbin, first, last in (
            ("serial (columns)", self.width, sbin, "s1", "s2"),
            ("parallel (rows)", self.height, pbin, "p1", "p2"),
        ):
            if span % nbin:
                lo = getattr(self, first)
                fit = lo + (span // nbin) * nbin - 1
                raise ValueRejected(
                    f"ROI {axis} span {span} px is not a whole number of {nbin}-pixel bins.",
                    value=self,
                    limit=nbin,
                    instrument=camera,
                    resource=resource,
                    fix=f"use a span that is a multiple of {nbin} (e.g. {last}={fit})"
                    if fit >= lo
                    else f"use a span of at least {nbin} pixels.",
                )


@dataclass(frozen=True)
class Frame:
    """One image: ``data`` is uint16 ``(h, w)``; ``frame_number`` counts from 1 per start."""

    data: np.ndarray
    frame_number: int
    timestamp: float
    """Host wall-clock time (``time.time()``) at which the frame was read out."""


@dataclass(frozen=True)
class AcquisitionSetup:
    """A checked acquisition setup; a new one is needed to change ROI, exposure or trigger."""

    roi: Roi
    binning: tuple[int, int]
    exposure: int
    """Exposure in units of ``exposure_resolution`` (PVCAM takes an integer)."""
    exposure_resolution: ExposureResolution
    exposure_mode: ExposureMode
    n_frames: int | None
    """Frames of a sequence; None for continuous acquisition."""
    continuous: bool
    ring_frames: int
    """Frames the host ring buffer holds in continuous mode."""

    @property
    def exposure_s(self) -> float:
        return self.exposure * EXPOSURE_RESOLUTIONS[self.exposure_resolution]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.roi.frame_shape(self.binning)

    @property
    def frame_bytes(self) -> int:
        h, w = self.frame_shape
        return h * w * 2


class CameraBackend(abc.ABC):
    """What the camera device needs from a PVCAM camera, whatever provides it.

    Lifecycle: ``open(name)`` -> read parameters -> ``setup(...)`` -> ``start()`` ->
    ``poll_frame()`` until done (``status()`` tells where the camera is) -> ``halt()`` /
    ``abort()`` -> ``close()``. Calls other than ``poll_frame`` return promptly; ``poll_frame``
    blocks at most ``timeout`` seconds, so a device runs it on a worker thread, never on the
    RunEngine's event loop.
    """

    kind: ClassVar[str] = "abstract"
    max_buffer_bytes: int = 4 * 2**30
    """Largest frame buffer (whole sequence, or the continuous ring) the host will allocate."""

    def __init__(self, *, label: str | None = None) -> None:
        self.label = label
        """Name used in error messages (the device's name in the profile), else the camera's."""

    # --- session -----------------------------------------------------------------------------

    @abc.abstractmethod
    def camera_names(self) -> list[str]:
        """Names of the cameras the SDK finds (e.g. ``["PrimeBSI"]``)."""

    @abc.abstractmethod
    def open(self, name: str | None = None) -> None:
        """Open a camera exclusively (the first one found if ``name`` is None)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop any acquisition and release the camera. Safe to call twice."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    @property
    def resource(self) -> str:
        """How errors name the hardware, e.g. ``pvcam://PrimeBSI``."""
        return f"{self.kind}://{self._camera_or_none() or '?'}"

    def _camera_or_none(self) -> str | None:
        try:
            return self.name if self.is_open else None
        except InstrumentError:
            return None

    @property
    def instrument(self) -> str:
        return self.label or self._camera_or_none() or "PVCAM camera"

    def __enter__(self) -> CameraBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- parameters --------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @property
    @abc.abstractmethod
    def chip_name(self) -> str: ...

    @property
    @abc.abstractmethod
    def sensor_size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels (PARAM_SER_SIZE, PARAM_PAR_SIZE)."""

    @property
    @abc.abstractmethod
    def bit_depth(self) -> int: ...

    @property
    @abc.abstractmethod
    def pixel_size_um(self) -> float: ...

    @property
    @abc.abstractmethod
    def temperature_c(self) -> float: ...

    @property
    @abc.abstractmethod
    def temperature_setpoint_c(self) -> float: ...

    @temperature_setpoint_c.setter
    @abc.abstractmethod
    def temperature_setpoint_c(self, value: float) -> None: ...

    @property
    @abc.abstractmethod
    def exposure_resolution(self) -> ExposureResolution:
        """Unit of the exposure value given to ``setup``: 'ms' (default), 'us' or 's'."""

    @exposure_resolution.setter
    @abc.abstractmethod
    def exposure_resolution(self, value: ExposureResolution) -> None: ...

    @property
    @abc.abstractmethod
    def readout_ports(self) -> list[str]: ...

    @property
    @abc.abstractmethod
    def speeds(self) -> list[str]:
        """Readout speeds of the current port."""

    @property
    @abc.abstractmethod
    def gains(self) -> list[int]:
        """Gain indices of the current port and speed."""

    @property
    @abc.abstractmethod
    def allowed_binnings(self) -> list[tuple[int, int]] | None:
        """``(sbin, pbin)`` pairs the camera accepts; None if any binning is accepted."""

    @property
    @abc.abstractmethod
    def exposure_modes(self) -> list[ExposureMode]:
        """Exposure modes this camera supports."""

    # --- acquisition -------------------------------------------------------------------------

    @abc.abstractmethod
    def setup(
        self,
        roi: Roi | None,
        binning: tuple[int, int],
        exposure: float,
        exposure_mode: int,
        n_frames: int | None,
        continuous: bool,
        ring_frames: int,
    ) -> AcquisitionSetup:
        """Check and apply an acquisition setup (``roi=None`` is the full sensor).

        Frames of a previous acquisition not yet polled are discarded.
        """

    @abc.abstractmethod
    def start(self) -> None:
        """Start the acquisition last set up."""

    @abc.abstractmethod
    def poll_frame(self, timeout: float) -> Frame | None:
        """The oldest frame not yet taken, waiting up to ``timeout`` s; None if none came."""

    @abc.abstractmethod
    def status(self) -> ImageStatus: ...

    @abc.abstractmethod
    def halt(self) -> None:
        """Stop acquiring; frames already read out can still be polled."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop acquiring at once and discard frames not yet taken."""

    @abc.abstractmethod
    def sw_trigger(self) -> None:
        """Software trigger for SOFTWARE_FIRST / SOFTWARE_EDGE modes."""

    @property
    @abc.abstractmethod
    def frames_dropped(self) -> int:
        """Frames the camera produced that the host will never get, since the last start."""

    @property
    @abc.abstractmethod
    def stalled(self) -> bool:
        """True while acquisition is paused because the ring is full of frames not taken."""

    # --- shared checks -----------------------------------------------------------------------

    def validate_setup(
        self,
        roi: Roi | None,
        binning: tuple[int, int],
        exposure: float,
        exposure_mode: int,
        n_frames: int | None,
        continuous: bool,
        ring_frames: int,
    ) -> AcquisitionSetup:
        """Turn setup arguments into an :class:`AcquisitionSetup` or a clear ValueRejected.

        Shared by every backend so the simulated and the real camera refuse the same inputs.
        """
        camera, resource = self.instrument, self.resource

        def reject(what: str, value: Any, fix: str, limit: Any = None) -> ValueRejected:
            return ValueRejected(
                what, value=value, limit=limit, instrument=camera, resource=resource, fix=fix
            )

        sensor = self.sensor_size
        if roi is None:
            roi = Roi.full(sensor)
        if not isinstance(roi, Roi):
            raise reject(f"roi must be a Roi(s1, s2, p1, p2), got {roi!r}.", roi, "build a Roi.")
        allowed = self.allowed_binnings
        if (
            not isinstance(binning, Sequence)
            or len(binning) != 2
            or not all(_is_int(b) and b >= 1 for b in binning)
        ):
            raise reject(
                f"binning must be (sbin, pbin) with integers >= 1, got {binning!r}.",
                binning,
                f"use one of {allowed}." if allowed else "use e.g. (2, 2).",
                allowed,
            )
        binning = (int(binning[0]), int(binning[1]))
        if allowed is not None and binning not in allowed:
            raise reject(
                f"binning {binning[0]}x{binning[1]} is not supported by this camera "
                f"(allowed: {', '.join(f'{s}x{p}' for s, p in allowed)}).",
                binning,
                f"use one of {allowed}.",
                allowed,
            )
        roi.check(sensor, binning, camera=camera, resource=resource)

        res = self.exposure_resolution
        if (
            isinstance(exposure, bool)
            or not isinstance(exposure, numbers.Real)
            or not math.isfinite(exposure)
            or exposure < 0
            or exposure > _MAX_EXPOSURE_UNITS
        ):
            raise reject(
                f"exposure must be a number of {res} between 0 and {_MAX_EXPOSURE_UNITS}, "
                f"got {exposure!r}.",
                exposure,
                f"give the exposure in {res} (the camera's exposure resolution).",
                (0, _MAX_EXPOSURE_UNITS),
            )
        if exposure != int(exposure):
            finer = "us" if res != "us" else None
            raise reject(
                f"exposure {exposure} {res} is not a whole number of {res}: PVCAM takes integer "
                "exposures in units of the exposure resolution.",
                exposure,
                f"set exposure_resolution = {finer!r} and give "
                f"{round(exposure * EXPOSURE_RESOLUTIONS[res] / 1e-6)} us."
                if finer
                else "round the exposure to whole microseconds.",
            )
        try:
            mode = ExposureMode(int(exposure_mode))
        except (ValueError, TypeError):
            mode = None
        if mode is None or isinstance(exposure_mode, bool) or mode not in self.exposure_modes:
            names = ", ".join(f"{m.name} ({m.value})" for m in self.exposure_modes)
            raise reject(
                f"exposure mode {exposure_mode!r} is not supported by this camera.",
                exposure_mode,
                f"use one of: {names}.",
            )
        if not isinstance(continuous, bool):
            raise reject(
                f"continuous must be True or False, got {continuous!r}.", continuous, "pass a bool."
            )
        if continuous:
            if n_frames is not None:
                raise reject(
                    f"continuous acquisition runs until halt(); n_frames must be None, "
                    f"got {n_frames!r}.",
                    n_frames,
                    "pass n_frames=None, or continuous=False for a sequence of n_frames.",
                )
        elif not (_is_int(n_frames) and 1 <= n_frames <= _MAX_SEQUENCE_FRAMES):
            raise reject(
                f"a sequence needs n_frames between 1 and {_MAX_SEQUENCE_FRAMES}, "
                f"got {n_frames!r}.",
                n_frames,
                "give the number of frames, or use continuous=True.",
                (1, _MAX_SEQUENCE_FRAMES),
            )
        if not (_is_int(ring_frames) and ring_frames >= 1):
            raise reject(
                f"ring_frames must be an integer >= 1, got {ring_frames!r}.",
                ring_frames,
                "give the size of the host ring buffer in frames (e.g. 16).",
            )
        setup = AcquisitionSetup(
            roi=roi,
            binning=binning,
            exposure=int(exposure),
            exposure_resolution=res,
            exposure_mode=mode,
            n_frames=None if continuous else int(n_frames),
            continuous=continuous,
            ring_frames=int(ring_frames),
        )
        buffer_frames = setup.ring_frames if continuous else setup.n_frames
        if buffer_frames * setup.frame_bytes > self.max_buffer_bytes:
            raise reject(
                f"the frame buffer would need {buffer_frames} x {setup.frame_bytes} bytes "
                f"({buffer_frames * setup.frame_bytes / 2**30:.1f} GiB), more than the "
                f"{self.max_buffer_bytes / 2**30:.1f} GiB limit"
                + ("" if continuous else " (a sequence buffers every frame)")
                + ".",
                buffer_frames,
                "use fewer frames, a smaller ROI or more binning"
                + ("" if continuous else ", or continuous mode with a ring buffer")
                + ".",
                self.max_buffer_bytes,
            )
        return setup


# --- real backend on pyvcam ---------------------------------------------------------------------

_SDK_LOCK = threading.Lock()
_SDK_USERS = 0

# pyvcam's check_frame_status() returns pvcam.h's status names as strings, except that it
# raises ValueError("Unrecognized frame status (N).") for a value outside its switch (older
# versions: without "(N)"); see _status_from_sdk.
_UNRECOGNISED_STATUS = re.compile(r"unrecognized frame status(?:\s*\((-?\d+)\))?", re.I)

_NOT_INSTALLED = (
    "pyvcam / PVCAM SDK not installed: use the simulated backend or install the Photometrics "
    "SDK and pyvcam"
)


class PyVcamBackend(CameraBackend):
    """A real PVCAM camera through Photometrics' ``pyvcam`` wrapper.

    PVCAM is initialised once per process and shared: the first backend to need it calls
    ``pvc.init_pvcam()``, the last one to close calls ``pvc.uninit_pvcam()``.

    Known differences from the simulated backend: ``stalled`` is always False (pyvcam's live
    queue drops its oldest frame instead of stalling; the loss shows up in ``frames_dropped``,
    counted from gaps in the frame counter), and ``status()`` is what the camera's driver
    reports through pyvcam's ``check_frame_status()``: a PVCAM 3.x driver never sends
    ACQUISITION_IN_PROGRESS, a 2.x driver does (see :meth:`_status_from_sdk` for how every
    answer, including pyvcam's exceptions, maps onto :class:`ImageStatus`).

    Errors from the SDK never reach the caller raw: a failed readout is an
    :class:`InstrumentFault` with code READOUT_FAILED (4), whether pyvcam says "readout failed"
    or PVCAM fails the status check (PV_FAIL); anything else is an :class:`InstrumentError`
    naming the camera. ``close()`` closes the camera and releases the SDK even when ending the
    acquisition or closing fails. Tested against a fake pyvcam with the real API surface
    (tests/devices/fake_pyvcam).
    """

    kind = "pvcam"

    def __init__(self, *, label: str | None = None) -> None:
        super().__init__(label=label)
        try:
            from pyvcam import constants, pvc
            from pyvcam.camera import Camera
        except (ImportError, OSError) as exc:
            raise InstrumentError(
                _NOT_INSTALLED,
                instrument=label or "PVCAM camera",
                resource="pvcam",
                fix="in the profile select the simulated camera backend, or install PVCAM from "
                "photometrics.com and then `pip install pyvcam`.",
            ) from exc
        self._pvc = pvc
        self._const = constants
        self._Camera = Camera
        self._cam: Any = None
        self._sdk_held = False
        self._setup: AcquisitionSetup | None = None
        self._acquiring = False
        self._failed = False
        self._pending: deque[Frame] = deque()
        self._last_count: int | None = None
        self._dropped = 0
        self._lock = threading.RLock()

    # --- SDK session ---------------------------------------------------------------------------

    def _sdk_acquire(self) -> None:
        global _SDK_USERS
        if self._sdk_held:
            return
        with _SDK_LOCK:
            if _SDK_USERS == 0:
                try:
                    self._pvc.init_pvcam()
                except RuntimeError as exc:
                    raise InstrumentError(
                        f"PVCAM could not be initialised: {_text(exc)}.",
                        instrument=self.instrument,
                        resource="pvcam",
                        fix="check that the PVCAM driver is installed and the camera powered; "
                        "close other programs that use PVCAM (PVCamTest, Micro-Manager).",
                    ) from exc
            _SDK_USERS += 1
            self._sdk_held = True

    def _sdk_release(self) -> None:
        global _SDK_USERS
        if not self._sdk_held:
            return
        with _SDK_LOCK:
            _SDK_USERS -= 1
            self._sdk_held = False
            if _SDK_USERS == 0:
                try:
                    self._pvc.uninit_pvcam()
                except RuntimeError:
                    pass  # nothing left to release; uninit failing at exit must not mask errors

    def _require_open(self) -> Any:
        if self._cam is None:
            raise InstrumentError(
                "the camera is not open.",
                instrument=self.instrument,
                resource=self.resource,
                fix="call open() first.",
            )
        return self._cam

    def _sdk_error(self, what: str, exc: Exception, fix: str) -> InstrumentError:
        return InstrumentError(
            f"{what}: {_text(exc)}.", instrument=self.instrument, resource=self.resource, fix=fix
        )

    def camera_names(self) -> list[str]:
        held = self._sdk_held
        self._sdk_acquire()
        try:
            return list(self._Camera.get_available_camera_names())
        except RuntimeError as exc:
            raise self._sdk_error(
                "PVCAM could not list cameras", exc, "check the camera cable and power."
            ) from exc
        finally:
            if not held:
                self._sdk_release()

    def open(self, name: str | None = None) -> None:
        with self._lock:
            if self._cam is not None:
                if name in (None, self._cam.name):
                    return
                raise InstrumentError(
                    f"this backend already has camera {self._cam.name!r} open.",
                    instrument=self.instrument,
                    resource=self.resource,
                    fix="close() it before opening another camera, or use a second backend.",
                )
            self._sdk_acquire()
            try:
                names = list(self._Camera.get_available_camera_names())
                if not names:
                    raise InstrumentError(
                        "PVCAM finds no camera.",
                        instrument=self.instrument,
                        resource="pvcam",
                        fix="check the camera's power and cable (PCIe/USB) and its driver.",
                    )
                chosen = names[0] if name is None else name
                if chosen not in names:
                    raise InstrumentError(
                        f"no PVCAM camera named {chosen!r}; cameras found: {names}.",
                        instrument=self.instrument,
                        resource=f"pvcam://{chosen}",
                        fix="correct the camera name in the profile (`daqbridge hardware` lists "
                        "cameras).",
                    )
                cam = self._Camera.select_camera(chosen)
                try:
                    cam.open()
                except RuntimeError as exc:
                    raise InstrumentError(
                        f"PVCAM could not open camera {chosen!r}: {_text(exc)}.",
                        instrument=self.label or chosen,
                        resource=f"pvcam://{chosen}",
                        fix="PVCAM opens cameras exclusively: close other programs using it.",
                    ) from exc
                self._cam = cam
            except BaseException:
                self._sdk_release()
                raise

    def close(self) -> None:
        with self._lock:
            cam = self._cam
            if cam is None:
                self._sdk_release()
                return
            try:
                if self._acquiring:
                    try:
                        self._finish()
                    except InstrumentError:
                        pass  # the camera is closed next whatever the acquisition's state
                cam.close()
            except RuntimeError:
                pass  # closing must always release the SDK; the camera is unusable anyway
            finally:
                self._cam = None
                self._setup = None
                self._pending.clear()
                self._sdk_release()

    @property
    def is_open(self) -> bool:
        return self._cam is not None

    # --- parameters --------------------------------------------------------------------------

    def _param(self, what: str, getter: Any, default: Any = None) -> Any:
        cam = self._require_open()
        try:
            return getter(cam)
        except AttributeError:
            if default is not None:
                return default
            raise InstrumentError(
                f"this camera does not provide {what}.",
                instrument=self.instrument,
                resource=self.resource,
                fix="do not rely on this parameter for this camera model.",
            ) from None
        except RuntimeError as exc:
            raise self._sdk_error(f"reading {what} failed", exc, "check the camera.") from exc

    @property
    def name(self) -> str:
        return self._require_open().name

    @property
    def chip_name(self) -> str:
        return str(self._param("the chip name", lambda c: c.chip_name))

    @property
    def sensor_size(self) -> tuple[int, int]:
        w, h = self._param("the sensor size", lambda c: c.sensor_size)
        return int(w), int(h)

    @property
    def bit_depth(self) -> int:
        return int(self._param("the bit depth", lambda c: c.bit_depth))

    @property
    def pixel_size_um(self) -> float:
        nm = self._param(
            "the pixel size", lambda c: c.get_param(self._const.PARAM_PIX_SER_SIZE)
        )  # PVCAM reports nanometres
        return float(nm) / 1000.0

    @property
    def temperature_c(self) -> float:
        return float(self._param("the sensor temperature", lambda c: c.temp))

    @property
    def temperature_setpoint_c(self) -> float:
        return float(self._param("the temperature setpoint", lambda c: c.temp_setpoint))

    @temperature_setpoint_c.setter
    def temperature_setpoint_c(self, value: float) -> None:
        cam = self._require_open()
        try:
            cam.temp_setpoint = value
        except ValueError as exc:
            raise ValueRejected(
                str(exc),
                value=value,
                instrument=self.instrument,
                resource=self.resource,
                fix="choose a setpoint inside the camera's range.",
            ) from exc
        except (AttributeError, RuntimeError) as exc:
            raise self._sdk_error(
                "setting the temperature setpoint failed",
                exc,
                "this camera may have a fixed setpoint.",
            ) from exc

    @property
    def exposure_resolution(self) -> ExposureResolution:
        value = self._param("the exposure resolution", lambda c: c.exp_res, default=0)
        for res, code in _PVCAM_EXP_RES.items():
            if code == value:
                return res  # type: ignore[return-value]
        return "ms"

    @exposure_resolution.setter
    def exposure_resolution(self, value: ExposureResolution) -> None:
        cam = self._require_open()
        if value not in _PVCAM_EXP_RES:
            raise ValueRejected(
                f"exposure resolution {value!r} is not one of 'ms', 'us', 's'.",
                value=value,
                instrument=self.instrument,
                resource=self.resource,
                fix="use 'ms', 'us' or 's'.",
            )
        try:
            cam.exp_res = _PVCAM_EXP_RES[value]
        except (ValueError, AttributeError) as exc:
            raise ValueRejected(
                f"this camera does not offer exposure resolution {value!r} ({_text(exc)}).",
                value=value,
                instrument=self.instrument,
                resource=self.resource,
                fix="use the default 'ms' resolution.",
            ) from exc

    @property
    def readout_ports(self) -> list[str]:
        return list(self._param("readout ports", lambda c: dict(c.readout_ports), default={}))

    def _port_table(self) -> dict:
        def current(c: Any) -> dict:
            table = c.port_speed_gain_table
            port = next(
                (n for n, e in table.items() if e.get("port_value") == c.readout_port), None
            )
            return table.get(port, {})

        return self._param("the port/speed/gain table", current, default={}) or {}

    @property
    def speeds(self) -> list[str]:
        return [k for k, v in self._port_table().items() if isinstance(v, dict)]

    @property
    def gains(self) -> list[int]:
        table = self._port_table()
        speed = next(
            (
                v
                for v in table.values()
                if isinstance(v, dict)
                and v.get("speed_index") == self._param("the speed", lambda c: c.speed, default=0)
            ),
            {},
        )
        return [int(g) for g in speed.get("gain_range", [])]

    @property
    def allowed_binnings(self) -> list[tuple[int, int]] | None:
        binnings = self._param("the binnings", lambda c: c.binnings, default=())
        if not binnings:
            return None
        return [(int(s), int(p)) for s, p in binnings]

    @property
    def exposure_modes(self) -> list[ExposureMode]:
        values = self._param("the exposure modes", lambda c: dict(c.exp_modes).values(), ())
        modes = []
        for v in values:
            try:
                modes.append(ExposureMode(int(v)))
            except ValueError:
                continue  # a mode daqbridge does not know: not offered
        return modes or [ExposureMode.TIMED]

    # --- acquisition -------------------------------------------------------------------------

    def setup(
        self,
        roi: Roi | None,
        binning: tuple[int, int],
        exposure: float,
        exposure_mode: int,
        n_frames: int | None,
        continuous: bool,
        ring_frames: int,
    ) -> AcquisitionSetup:
        with self._lock:
            cam = self._require_open()
            if self._acquiring:
                raise InstrumentError(
                    "cannot set up while an acquisition runs.",
                    instrument=self.instrument,
                    resource=self.resource,
                    fix="halt() or abort() first.",
                )
            setup = self.validate_setup(
                roi, binning, exposure, exposure_mode, n_frames, continuous, ring_frames
            )
            try:
                cam.reset_rois()
                cam.set_roi(setup.roi.s1, setup.roi.p1, setup.roi.width, setup.roi.height)
                cam.binning = setup.binning
                if cam.exp_mode != int(setup.exposure_mode):
                    cam.exp_mode = int(setup.exposure_mode)
                cam.exp_time = setup.exposure
            except ValueError as exc:
                raise ValueRejected(
                    f"the camera refused the setup: {_text(exc)}.",
                    value=setup,
                    instrument=self.instrument,
                    resource=self.resource,
                    fix="check ROI, binning, exposure and mode against the camera's limits.",
                ) from exc
            except (RuntimeError, AttributeError) as exc:
                raise self._sdk_error("setup failed", exc, "check the camera.") from exc
            self._setup = setup
            self._pending.clear()  # a new setup is a new acquisition: frames not taken are gone
            return setup

    def start(self) -> None:
        with self._lock:
            cam = self._require_open()
            setup = self._setup
            if setup is None:
                raise InstrumentError(
                    "start() without setup().",
                    instrument=self.instrument,
                    resource=self.resource,
                    fix="call setup(...) first.",
                )
            if self._acquiring:
                raise InstrumentError(
                    "an acquisition is already running.",
                    instrument=self.instrument,
                    resource=self.resource,
                    fix="halt() it before starting again.",
                )
            self._pending.clear()
            self._failed = False
            self._dropped = 0
            self._last_count = None
            if setup.continuous:
                begin, kw = cam.start_live, {"buffer_frame_count": setup.ring_frames}
            else:
                begin, kw = cam.start_seq, {"num_frames": setup.n_frames}
            try:
                try:
                    begin(exp_time=setup.exposure, reset_frame_counter=True, **kw)
                except TypeError:  # pyvcam before 2.1 has no reset_frame_counter
                    begin(exp_time=setup.exposure, **kw)
            except (RuntimeError, ValueError) as exc:
                raise self._sdk_error(
                    "starting the acquisition failed",
                    exc,
                    "check the setup (buffer memory, trigger mode) and the camera.",
                ) from exc
            self._acquiring = True

    def _readout_failed(self, exc: BaseException) -> InstrumentFault:
        self._failed = True
        return InstrumentFault(
            f"PVCAM readout failed: {_text(exc)}.",
            code=int(ImageStatus.READOUT_FAILED),
            instrument=self.instrument,
            resource=self.resource,
            fix="restart the acquisition; if it repeats, check the cable and trigger.",
        )

    def _grab(self, timeout_ms: int) -> Frame | None:
        try:
            frame, _fps, count = self._cam.poll_frame(timeout_ms=timeout_ms)
        except RuntimeError as exc:
            text = str(exc).lower()
            if "readout failed" in text:  # "Frame readout failed." (pyvcam 2.x: "get_frame() ...")
                raise self._readout_failed(exc) from exc
            if "timeout" in text or "aborted" in text or "not active" in text:
                return None  # nothing came in time, or nothing more will come
            # Anything else is PVCAM's own error text (PV_FAIL). PVCAM 3.x fails
            # pl_exp_check_status exactly when a readout failed: ask it before blaming the SDK.
            if self._status_from_sdk(self._cam) is ImageStatus.READOUT_FAILED:
                raise self._readout_failed(exc) from exc
            raise self._sdk_error("polling a frame failed", exc, "check the camera.") from exc
        data = frame["pixel_data"]
        if isinstance(data, list):  # several ROIs: daqbridge sets exactly one
            data = data[0]
        count = int(count)
        if self._last_count is not None and count > self._last_count + 1:
            self._dropped += count - self._last_count - 1
        self._last_count = count
        return Frame(
            data=np.asarray(data, dtype=np.uint16), frame_number=count, timestamp=time.time()
        )

    def poll_frame(self, timeout: float) -> Frame | None:
        if self._pending:
            return self._pending.popleft()
        self._require_open()
        if not self._acquiring:
            return None
        return self._grab(max(0, int(round(timeout * 1000))))

    def status(self) -> ImageStatus:
        cam = self._require_open()
        if self._failed:
            return ImageStatus.READOUT_FAILED
        if not self._acquiring:
            return ImageStatus.NOT_ACTIVE
        return self._status_from_sdk(cam)

    def _status_from_sdk(self, cam: Any) -> ImageStatus:
        """What pyvcam's ``check_frame_status()`` means, for every answer PVCAM can give.

        - A status name: that status (FRAME_AVAILABLE is READOUT_COMPLETE's value).
        - RuntimeError: pl_exp_check_status returned PV_FAIL, which PVCAM 3.x's pvcam.h defines
          as READOUT_FAILED ("the function returns a PV_FAIL and pl_error_code is set").
        - ValueError "Unrecognized frame status (N)": a value pyvcam's switch lacks. pvcam.h
          defines one that a camera sends, ACQUISITION_IN_PROGRESS (5, PVCAM 2.x drivers); an
          older pyvcam omits the number, and 5 is then the value PVCAM can have sent (a status
          4 it failed to name still ends the next poll with "readout failed"). A number pvcam.h
          does not define is an error naming it, never a guess.
        """
        try:
            name = str(cam.check_frame_status())
        except RuntimeError:
            return ImageStatus.READOUT_FAILED
        except ValueError as exc:
            match = _UNRECOGNISED_STATUS.search(str(exc))
            if match is None:
                raise self._sdk_error("reading the status failed", exc, "check pyvcam.") from exc
            value = int(match.group(1)) if match.group(1) else ImageStatus.ACQUISITION_IN_PROGRESS
            try:
                return ImageStatus(value)
            except ValueError:
                raise self._status_unknown(f"status {value}") from exc
        try:
            return ImageStatus[name]
        except KeyError:
            raise self._status_unknown(f"status {name!r}") from None

    def _status_unknown(self, what: str) -> InstrumentError:
        return InstrumentError(
            f"PVCAM reported image {what}, which pvcam.h's PL_IMAGE_STATUSES does not define.",
            instrument=self.instrument,
            resource=self.resource,
            fix="check that pyvcam matches the installed PVCAM version; report the value to "
            "the daqbridge maintainers with both versions.",
        )

    def _finish(self) -> None:
        """End the acquisition. pyvcam raises RuntimeError or (for pl_exp_abort) ValueError."""
        try:
            self._cam.finish()
        except (RuntimeError, ValueError) as exc:
            raise self._sdk_error(
                "ending the acquisition failed",
                exc,
                "close and reopen the camera; if it repeats, power-cycle it.",
            ) from exc
        finally:
            self._acquiring = False
            self._failed = False

    def halt(self) -> None:
        with self._lock:
            if self._cam is None or not self._acquiring:
                return
            try:
                # pyvcam frees its frame buffers in finish(): keep what was read out first.
                for _ in range(max(1, self._setup.ring_frames if self._setup else 1) + 1):
                    frame = self._grab(0)
                    if frame is None:
                        break
                    self._pending.append(frame)
            except InstrumentError:
                pass  # a failed readout ends the draining; the acquisition ends all the same
            finally:
                self._finish()

    def abort(self) -> None:
        with self._lock:
            self._pending.clear()
            if self._cam is not None and self._acquiring:
                self._finish()

    def sw_trigger(self) -> None:
        cam = self._require_open()
        try:
            cam.sw_trigger()
        except (ValueError, RuntimeError) as exc:
            raise self._sdk_error(
                "software trigger failed",
                exc,
                "use SOFTWARE_FIRST or SOFTWARE_EDGE exposure mode and start() first.",
            ) from exc

    @property
    def frames_dropped(self) -> int:
        return self._dropped

    @property
    def stalled(self) -> bool:
        return False


def load_backend(kind: str, **opts: Any) -> CameraBackend:
    """Build the camera backend named in a profile. Only the real one can be built here.

    ``kind="pvcam"`` returns a :class:`PyVcamBackend` (InstrumentError if pyvcam is missing).
    The simulated backend lives in ``daqbridge.sim``, which device code must not import: the
    runtime builds ``daqbridge.sim.pvcam.SimulatedCameraBackend(...)`` and hands it to the device.
    """
    key = str(kind).strip().lower()
    if key == "pvcam":
        return PyVcamBackend(**opts)
    if key in ("sim", "simulated"):
        raise ConfigError(
            "the simulated camera backend is built by the runtime, not by the device layer.",
            key="backend",
            fix="let the runtime construct daqbridge.sim.pvcam.SimulatedCameraBackend and pass "
            "it to the camera device (devices must not import daqbridge.sim).",
        )
    raise ConfigError(
        f"unknown camera backend {kind!r}; known: 'pvcam' (real camera, needs pyvcam) and "
        "'sim' (built by the runtime).",
        key="backend",
        fix="set the camera backend to 'pvcam' or 'sim'.",
    )
