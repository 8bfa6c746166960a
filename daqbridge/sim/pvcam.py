"""A simulated Photometrics camera behind the PVCAM backend interface.

It stands in for ``PyVcamBackend`` where the vendor SDK cannot be installed, and reproduces what
a camera device has to cope with (INSTRUMENTS.md, "Photometrics PVCAM camera"):

- Prime BSI defaults: 2048 x 2048 pixels of 6.5 um, 16 bit, chip ``GS2020BSI``, camera name
  ``PrimeBSI``; binnings 1x1, 2x2, 4x4; cameras are opened exclusively.
- Frame timing: period = exposure + readout, readout = 1.28 ms x rows / 2048 (about 47 frames/s
  at 20 ms full frame). The sensor reads every row of the ROI whatever the binning (an sCMOS bins
  in its FPGA), so only the ROI height shortens readout. ``speed`` scales time (10 = ten times
  faster; ``math.inf`` = no waiting).
- Status (``status()``, what ``pl_exp_check_status`` reports), every PL_IMAGE_STATUSES value:

  ============================  =========================================================
  READOUT_NOT_ACTIVE (0)        after ``setup()``, ``halt()``, ``abort()``
  EXPOSURE_IN_PROGRESS (1)      started, no frame read out yet (exposing, or waiting for
                                the first trigger)
  READOUT_IN_PROGRESS (2)       a frame is being read out
  READOUT_COMPLETE (3)          a sequence has all its frames (until halt/abort)
  FRAME_AVAILABLE (3)           continuous: the ring holds frames not taken (also while
                                STALLED on a full ring), except during a readout
  READOUT_FAILED (4)            after a failed readout (``fail_next_readout()``)
  ACQUISITION_IN_PROGRESS (5)   between frames: at least one frame read out (and, in
                                continuous mode, all taken), exposing the next or waiting
                                for its trigger
  ============================  =========================================================

  Sources, and where they disagree: PVCAM 3.x's pvcam.h (Photometrics/PyVCAM
  ``pvcam-sdk/linux/include/pvcam.h``) documents 0-4 as above ("waiting for data, none has
  arrived yet"; "data has started to arrive"; READOUT_FAILED comes with PV_FAIL) and calls
  ACQUISITION_IN_PROGRESS "deprecated, not used by PVCAM"; PVCAM 2.x's pvcam.h (Roper
  Scientific 2012, openspim/3rdpartypublic ``Photometrics/PVCAM/SDK/Headers/pvcam.h``) has
  pl_exp_check_status report a RUNNING driver without new data as ACQUISITION_IN_PROGRESS.
  pyvcam (Photometrics/PyVCAM ``src/pyvcam/pvcmodule.cpp``, ``check_frame_status``) names 0-4
  (3 as FRAME_AVAILABLE in live mode, "at least one frame is available", ``camera.py``) and
  raises ValueError for 5. The simulator sends 5 between frames, as a camera on a 2.x driver
  does: a driver that knows only 3.x's values then fails at once here, not in the lab.
  MAX_CAMERA_STATUS (6) ends the C enum and is never reported. The moments are pinned, for
  this simulator and for ``PyVcamBackend`` alike, by ``tests/transcripts/pvcam.yaml``.
- Continuous acquisition into a no-overwrite ring of ``ring_frames``: once the ring holds that
  many frames the host has not taken, acquisition STALLS (``stalled`` is True, status
  FRAME_AVAILABLE, no frame is lost) and resumes, with a fresh exposure, when a frame is
  polled. A sequence buffers all its frames (as ``pl_exp_setup_seq`` does), so it never stalls.
- Trigger modes: TIMED, VARIABLE_TIMED, INT_STROBE and EXT_TRIG_INTERNAL run free;
  TRIGGER_FIRST, TRIG_FIRST and SOFTWARE_FIRST wait for one trigger, then run free; the other
  modes wait for a trigger before every frame. ``sw_trigger()`` stands for the software trigger
  and for an edge on the trigger input alike.
- Images: a Gaussian spot on a bias with seeded noise, signal proportional to exposure, binning
  SUMS pixels (saturating at the bit depth), computed once per setup; frame ``n`` is that base
  plus ``n % 16`` counts. Frames are rendered when polled, so an undrained ring costs no memory.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daqbridge.devices.pvcam_backend import (
    EXPOSURE_RESOLUTIONS,
    AcquisitionSetup,
    CameraBackend,
    ExposureMode,
    ExposureResolution,
    Frame,
    ImageStatus,
    Roi,
)
from daqbridge.errors import InstrumentError, InstrumentFault, ValueRejected

__all__ = ["FULL_FRAME_READOUT_S", "SimulatedCameraBackend"]

FULL_FRAME_READOUT_S = 1.0 / 47.0 - 0.020
"""Full-sensor readout of the simulated Prime BSI, from the lab's 47 frames/s at 20 ms."""

_FREE_RUNNING = frozenset(
    {
        ExposureMode.TIMED,
        ExposureMode.VARIABLE_TIMED,
        ExposureMode.INT_STROBE,
        ExposureMode.EXT_TRIG_INTERNAL,
    }
)
_TRIGGER_FIRST = frozenset(
    {ExposureMode.TRIGGER_FIRST, ExposureMode.TRIG_FIRST, ExposureMode.SOFTWARE_FIRST}
)
_FRAME_OFFSET_CYCLE = 16

# Which simulated cameras are open, across backends: PVCAM opens a camera exclusively.
_OPEN_LOCK = threading.Lock()
_OPEN: dict[str, weakref.ref[SimulatedCameraBackend]] = {}


@dataclass
class _Run:
    """One acquisition; a halted run's producer thread can no longer touch the backend."""

    setup: AcquisitionSetup
    stopped: bool = False
    produced: int = 0
    triggers: int = 0


class SimulatedCameraBackend(CameraBackend):
    """A Prime BSI-like camera with realistic timing, ring stall and failure injection."""

    kind = "pvcam-sim"

    def __init__(
        self,
        *,
        camera_names: Sequence[str] = ("PrimeBSI",),
        sensor_size: tuple[int, int] = (2048, 2048),
        pixel_size_um: float = 6.5,
        bit_depth: int = 16,
        chip_name: str = "GS2020BSI",
        full_frame_readout_s: float = FULL_FRAME_READOUT_S,
        allowed_binnings: Sequence[tuple[int, int]] = ((1, 1), (2, 2), (4, 4)),
        temperature_setpoint_c: float = -20.0,
        speed: float = 1.0,
        seed: int = 0,
        label: str | None = None,
    ) -> None:
        super().__init__(label=label)
        if not speed > 0:
            raise ValueError(f"simulator speed must be > 0, got {speed!r}")
        if not camera_names:
            raise ValueError("a simulated PVCAM system needs at least one camera name")
        w, h = sensor_size
        if not (w >= 1 and h >= 1) or not 8 <= bit_depth <= 16:
            raise ValueError(f"bad sensor {sensor_size!r} / bit depth {bit_depth!r}")
        self._names = list(camera_names)
        self._sensor = (int(w), int(h))
        self._pixel_um = float(pixel_size_um)
        self._bit_depth = int(bit_depth)
        self._chip = chip_name
        self._full_readout_s = float(full_frame_readout_s)
        self._binnings = [(int(s), int(p)) for s, p in allowed_binnings]
        self._setpoint = float(temperature_setpoint_c)
        self.speed = float(speed)
        self.seed = seed
        self._open_name: str | None = None
        self._exp_res: ExposureResolution = "ms"
        self._setup: AcquisitionSetup | None = None
        self._cond = threading.Condition()
        self._run: _Run | None = None
        self._thread: threading.Thread | None = None
        self._ring: deque[tuple[int, float]] = deque()
        self._phase = ImageStatus.NOT_ACTIVE
        self._failed_frame: int | None = None
        self._fail_next = 0
        self._dropped = 0
        self._stalled = False
        self.stall_count = 0
        """How many times acquisition stalled on a full ring since the last start."""
        self._base_cache: dict[tuple, np.ndarray] = {}

    # --- time ----------------------------------------------------------------------------------

    def _real(self, sim_seconds: float) -> float:
        return 0.0 if math.isinf(self.speed) else sim_seconds / self.speed

    def readout_time_s(self, setup: AcquisitionSetup | None = None) -> float:
        """Simulated readout time of one frame of ``setup`` (the current one by default)."""
        setup = setup or self._require_setup()
        return self._full_readout_s * setup.roi.height / self._sensor[1]

    def frame_period_s(self, setup: AcquisitionSetup | None = None) -> float:
        """Simulated time between frames (exposure + readout; no overlap)."""
        setup = setup or self._require_setup()
        return setup.exposure_s + self.readout_time_s(setup)

    # --- session -------------------------------------------------------------------------------

    def _fail(self, what: str, fix: str) -> InstrumentError:
        return InstrumentError(what, instrument=self.instrument, resource=self.resource, fix=fix)

    def _require_open(self) -> str:
        if self._open_name is None:
            raise self._fail("the camera is not open.", "call open() first.")
        return self._open_name

    def _require_setup(self) -> AcquisitionSetup:
        if self._setup is None:
            raise self._fail("no acquisition has been set up.", "call setup(...) first.")
        return self._setup

    def camera_names(self) -> list[str]:
        return list(self._names)

    def open(self, name: str | None = None) -> None:
        chosen = self._names[0] if name is None else name
        if self._open_name is not None:
            if chosen == self._open_name:
                return
            raise self._fail(
                f"this backend already has camera {self._open_name!r} open.",
                "close() it before opening another camera, or use a second backend.",
            )
        if chosen not in self._names:
            raise InstrumentError(
                f"no PVCAM camera named {chosen!r}; cameras found: {self._names}.",
                instrument=self.label or chosen,
                resource=f"{self.kind}://{chosen}",
                fix="correct the camera name in the profile.",
            )
        with _OPEN_LOCK:
            holder = _OPEN.get(chosen)
            other = holder() if holder else None
            if other is not None and other is not self and other._open_name == chosen:
                raise InstrumentError(
                    f"camera {chosen!r} is already open by another backend (PVCAM opens "
                    "cameras exclusively).",
                    instrument=self.label or chosen,
                    resource=f"{self.kind}://{chosen}",
                    fix="close the other backend first; only one device may own the camera.",
                )
            _OPEN[chosen] = weakref.ref(self)
        self._open_name = chosen
        self._exp_res = "ms"
        self._setup = None

    def close(self) -> None:
        if self._open_name is None:
            return
        self.abort()
        with _OPEN_LOCK:
            holder = _OPEN.get(self._open_name)
            if holder is not None and holder() is self:
                del _OPEN[self._open_name]
        self._open_name = None
        self._setup = None
        self._base_cache.clear()

    @property
    def is_open(self) -> bool:
        return self._open_name is not None

    # --- parameters ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._require_open()

    @property
    def chip_name(self) -> str:
        self._require_open()
        return self._chip

    @property
    def sensor_size(self) -> tuple[int, int]:
        self._require_open()
        return self._sensor

    @property
    def bit_depth(self) -> int:
        self._require_open()
        return self._bit_depth

    @property
    def pixel_size_um(self) -> float:
        self._require_open()
        return self._pixel_um

    @property
    def temperature_c(self) -> float:
        self._require_open()
        return self._setpoint  # the simulated cooler is always locked

    @property
    def temperature_setpoint_c(self) -> float:
        self._require_open()
        return self._setpoint

    @temperature_setpoint_c.setter
    def temperature_setpoint_c(self, value: float) -> None:
        self._require_open()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not -25 <= value <= 25:
            raise ValueRejected(
                f"temperature setpoint {value!r} C is outside -25.0 .. 25.0 C.",
                value=value,
                limit=(-25.0, 25.0),
                instrument=self.instrument,
                resource=self.resource,
                fix="choose a setpoint between -25 and 25 C.",
            )
        self._setpoint = float(value)

    @property
    def exposure_resolution(self) -> ExposureResolution:
        self._require_open()
        return self._exp_res

    @exposure_resolution.setter
    def exposure_resolution(self, value: ExposureResolution) -> None:
        self._require_open()
        if value not in EXPOSURE_RESOLUTIONS:
            raise ValueRejected(
                f"exposure resolution {value!r} is not one of 'ms', 'us', 's'.",
                value=value,
                instrument=self.instrument,
                resource=self.resource,
                fix="use 'ms', 'us' or 's'.",
            )
        self._exp_res = value  # applies from the next setup(), as on the real camera

    @property
    def readout_ports(self) -> list[str]:
        self._require_open()
        return ["Sensitivity", "Speed", "Dynamic Range"]

    @property
    def speeds(self) -> list[str]:
        self._require_open()
        return ["100 MHz"]

    @property
    def gains(self) -> list[int]:
        self._require_open()
        return [1, 2]

    @property
    def allowed_binnings(self) -> list[tuple[int, int]] | None:
        self._require_open()
        return list(self._binnings)

    @property
    def exposure_modes(self) -> list[ExposureMode]:
        self._require_open()
        return list(ExposureMode)

    # --- acquisition ---------------------------------------------------------------------------

    @property
    def acquiring(self) -> bool:
        with self._cond:
            return self._run is not None and not self._run.stopped

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
        self._require_open()
        if self.acquiring:
            raise self._fail("cannot set up while an acquisition runs.", "halt() or abort() first.")
        setup = self.validate_setup(
            roi, binning, exposure, exposure_mode, n_frames, continuous, ring_frames
        )
        self._base_frame(setup)  # the cost of a new setup is paid here, not per frame
        with self._cond:
            self._setup = setup
            self._run = None  # a new setup is a new acquisition: frames not taken are gone
            self._ring.clear()
            self._failed_frame = None
            self._phase = ImageStatus.NOT_ACTIVE
        return setup

    def start(self) -> None:
        self._require_open()
        setup = self._require_setup()
        with self._cond:
            if self._run is not None and not self._run.stopped:
                raise self._fail("an acquisition is already running.", "halt() it first.")
            old = self._thread
        if old is not None:
            old.join(2.0)
        with self._cond:
            self._ring.clear()
            self._failed_frame = None
            self._dropped = 0
            self._stalled = False
            self.stall_count = 0
            self._phase = ImageStatus.EXPOSURE_IN_PROGRESS
            run = self._run = _Run(setup)
            # Started before it is published, both under the lock that publishes the run: a
            # stop() from another thread that sees the run acquiring finds a thread it can join
            # (joining one not yet started raises). The producer waits for the lock to begin.
            thread = threading.Thread(
                target=self._produce, args=(run,), name=f"pvcam-sim:{self._open_name}", daemon=True
            )
            thread.start()
            self._thread = thread

    def _wait_until(self, run: _Run, deadline: float) -> bool:
        """Sleep (lock held by caller's ``with``) until ``deadline``; False if the run stopped."""
        while not run.stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._cond.wait(remaining)
        return False

    def _produce(self, run: _Run) -> None:
        setup = run.setup
        exposure = self._real(setup.exposure_s)
        readout = self._real(self.readout_time_s(setup))
        capacity = setup.ring_frames if setup.continuous else setup.n_frames
        mode = setup.exposure_mode
        next_start = time.monotonic()
        with self._cond:
            while not run.stopped:
                if not setup.continuous and run.produced >= setup.n_frames:
                    self._phase = ImageStatus.READOUT_COMPLETE
                    run.stopped = True
                    break
                self._phase = ImageStatus.EXPOSURE_IN_PROGRESS
                if len(self._ring) >= capacity:
                    # No-overwrite ring full: the camera waits for the host to take a frame.
                    self._stalled = True
                    self.stall_count += 1
                    while len(self._ring) >= capacity and not run.stopped:
                        self._cond.wait(0.5)
                    self._stalled = False
                    next_start = max(next_start, time.monotonic())
                    continue
                if mode not in _FREE_RUNNING and not (mode in _TRIGGER_FIRST and run.produced):
                    while run.triggers == 0 and not run.stopped:
                        self._cond.wait(0.5)
                    if run.stopped:
                        break
                    run.triggers -= 1
                    next_start = max(next_start, time.monotonic())
                if not self._wait_until(run, next_start + exposure):
                    break
                self._phase = ImageStatus.READOUT_IN_PROGRESS
                if not self._wait_until(run, next_start + exposure + readout):
                    break
                run.produced += 1
                if self._fail_next > 0:
                    self._fail_next -= 1
                    self._failed_frame = run.produced
                    self._dropped += 1
                    self._phase = ImageStatus.READOUT_FAILED
                    run.stopped = True
                    self._cond.notify_all()
                    break
                self._ring.append((run.produced, time.time()))
                self._cond.notify_all()
                next_start += exposure + readout

    def poll_frame(self, timeout: float) -> Frame | None:
        self._require_open()
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            run = self._run
            if run is None:
                raise self._fail("poll_frame() before start().", "call start() first.")
            while not self._ring:
                if self._failed_frame is not None:
                    raise InstrumentFault(
                        f"readout of frame {self._failed_frame} failed (status READOUT_FAILED); "
                        "the acquisition stopped.",
                        code=int(ImageStatus.READOUT_FAILED),
                        instrument=self.instrument,
                        resource=self.resource,
                        fix="halt() and start() again; on the real camera check the cable and "
                        "the trigger signal.",
                    )
                if run.stopped:
                    return None  # nothing more will arrive
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            number, stamp = self._ring.popleft()
            self._cond.notify_all()  # a stalled producer may go on
        return Frame(data=self._render(run.setup, number), frame_number=number, timestamp=stamp)

    def status(self) -> ImageStatus:
        """What ``pl_exp_check_status`` reports now (see the module docstring for when)."""
        self._require_open()
        with self._cond:
            run, phase = self._run, self._phase
            if phase is not ImageStatus.EXPOSURE_IN_PROGRESS or run is None:
                return phase
            if run.setup.continuous and self._ring:
                return ImageStatus.FRAME_AVAILABLE
            if run.produced:
                return ImageStatus.ACQUISITION_IN_PROGRESS
            return ImageStatus.EXPOSURE_IN_PROGRESS

    def _stop(self, *, discard: bool) -> None:
        with self._cond:
            run = self._run
            if run is not None:
                run.stopped = True
            if discard:
                self._ring.clear()
            self._failed_frame = None
            self._stalled = False
            self._phase = ImageStatus.NOT_ACTIVE
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def halt(self) -> None:
        self._stop(discard=False)

    def abort(self) -> None:
        self._stop(discard=True)

    def sw_trigger(self) -> None:
        self._require_open()
        with self._cond:
            setup, run = self._setup, self._run
            if setup is not None and setup.exposure_mode in _FREE_RUNNING:
                raise self._fail(
                    f"software trigger in {setup.exposure_mode.name} mode, which runs free.",
                    "set up with a trigger mode (SOFTWARE_EDGE, SOFTWARE_FIRST, EDGE_RISING...).",
                )
            if run is None or run.stopped:
                raise self._fail(
                    "software trigger while no acquisition runs.", "start() first, then trigger."
                )
            run.triggers += 1
            self._cond.notify_all()

    @property
    def frames_dropped(self) -> int:
        """Frames lost to failed readouts (the no-overwrite ring itself never loses one)."""
        with self._cond:
            return self._dropped

    @property
    def stalled(self) -> bool:
        with self._cond:
            return self._stalled

    @property
    def frames_waiting(self) -> int:
        """Frames read out and not yet polled."""
        with self._cond:
            return len(self._ring)

    def fail_next_readout(self, count: int = 1) -> None:
        """Fault: the next ``count`` readouts fail; the first one stops the acquisition."""
        with self._cond:
            self._fail_next += int(count)

    # --- images --------------------------------------------------------------------------------

    def _base_frame(self, setup: AcquisitionSetup) -> np.ndarray:
        key = (setup.roi, setup.binning, setup.exposure_s)
        base = self._base_cache.get(key)
        if base is not None:
            return base
        roi, (sbin, pbin) = setup.roi, setup.binning
        width, height = self._sensor
        rng = np.random.default_rng([self.seed, roi.s1, roi.p1, roi.width, roi.height])
        # Integer noise is ~10x cheaper than Gaussian and looks the same to a device test.
        raw = rng.integers(0, 8, size=(roi.height, roi.width), dtype=np.uint16).astype(np.float32)
        raw += 100.0  # bias
        cols = np.arange(roi.s1, roi.s2 + 1, dtype=np.float32)
        rows = np.arange(roi.p1, roi.p2 + 1, dtype=np.float32)
        sigma = 0.04 * min(width, height)
        gx = np.exp(-0.5 * ((cols - width / 2) / sigma) ** 2)
        gy = np.exp(-0.5 * ((rows - height / 2) / sigma) ** 2)
        # Signal rates in counts/s: a spot of 50 000 at its peak on 500 of background.
        raw += np.float32(setup.exposure_s) * (50_000.0 * np.outer(gy, gx) + 500.0)
        h, w = setup.frame_shape
        binned = raw.reshape(h, pbin, w, sbin).sum(axis=(1, 3), dtype=np.float64)
        top = 2**self._bit_depth - 1 - (_FRAME_OFFSET_CYCLE - 1)
        base = np.clip(binned, 0, top).astype(np.uint16)
        if len(self._base_cache) >= 4:
            self._base_cache.pop(next(iter(self._base_cache)))
        self._base_cache[key] = base
        return base

    def _render(self, setup: AcquisitionSetup, frame_number: int) -> np.ndarray:
        return self._base_frame(setup) + np.uint16(frame_number % _FRAME_OFFSET_CYCLE)
