"""A fake of pyvcam's C extension ``pvc``: the PVCAM calls the real ``Camera`` makes, in Python.

Function names, arguments, return values and exceptions follow ``pvcMethods`` and the functions
of Photometrics/PyVCAM ``src/pyvcam/pvcmodule.cpp`` (see ``pyvcam/__init__.py``). Behind them is
a fake PVCAM library with one kind of camera (``sdk``), deterministic and free of threads:

- Time passes only while the host waits: a ``get_frame`` with a non-zero timeout is where a
  frame may arrive (one every ``sdk.polls_per_frame`` such calls); a zero timeout only looks.
  A waiting ``get_frame`` that gets no frame blocks for its timeout, as the real one does,
  unless a trigger, an abort or a finish wakes it.
- Free-running exposure modes deliver frames on their own; the trigger-first modes after one
  trigger, the edge and level modes one frame per trigger (``sw_trigger`` for the software
  modes, ``sdk.external_trigger()`` for the others).
- ``pl_exp_check_status`` gives READOUT_NOT_ACTIVE with no acquisition, READOUT_COMPLETE when a
  sequence has all its frames, FRAME_AVAILABLE while a live queue holds frames, READOUT_FAILED
  with PV_FAIL after a failed readout (PVCAM 3.x's pvcam.h), else ``sdk.running_status``:
  EXPOSURE_IN_PROGRESS, or ACQUISITION_IN_PROGRESS for a PVCAM 2.x driver.
- ``sdk.force_status = (ok, value)`` overrides that answer, to replay any value pvcam.h defines.

Every call is appended to ``calls`` as a tuple ``(name, *args)``; ``pyvcam.camera.Camera``
records its own calls there too, prefixed ``Camera.``, so one list shows both levels in order.
``sdk.fail_on[name] = exception`` makes the next call of ``name`` raise it (once).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyvcam import constants as const

calls: list[tuple] = []
"""Every call into this module, in order (cleared by ``sdk.reset()``)."""

_FREE_RUNNING = {
    const.TIMED_MODE,
    const.VARIABLE_TIMED_MODE,
    const.INT_STROBE_MODE,
    const.EXT_TRIG_INTERNAL,
}
_TRIGGER_FIRST = {
    const.TRIGGER_FIRST_MODE,
    const.EXT_TRIG_TRIG_FIRST,
    const.EXT_TRIG_SOFTWARE_FIRST,
}
_SOFTWARE = {const.EXT_TRIG_SOFTWARE_FIRST, const.EXT_TRIG_SOFTWARE_EDGE}
_WAIT_FOREVER_S = 60.0  # WAIT_FOREVER, bounded so a test with a bug fails instead of hanging


@dataclass
class CameraSpec:
    """One fake camera: a Prime BSI scaled down to a small sensor so frames are cheap."""

    name: str = "PrimeBSI"
    sensor: tuple[int, int] = (64, 48)
    chip: str = "GS2020BSI"
    bit_depth: int = 16
    pixel_nm: int = 6500
    temp_centi_c: int = -2000
    setpoint_centi_c: int = -2000
    setpoint_range: tuple[int, int] = (-2500, 2500)
    binnings: dict[str, int] = field(default_factory=lambda: {"1x1": 1, "2x2": 2, "4x4": 4})
    exposure_modes: dict[str, int] = field(
        default_factory=lambda: {
            "Timed": const.TIMED_MODE,
            "Internal Trigger": const.EXT_TRIG_INTERNAL,
            "Trigger First": const.EXT_TRIG_TRIG_FIRST,
            "Edge Trigger": const.EXT_TRIG_EDGE_RISING,
            "Software Trigger First": const.EXT_TRIG_SOFTWARE_FIRST,
            "Software Trigger Edge": const.EXT_TRIG_SOFTWARE_EDGE,
        }
    )
    exp_resolutions: dict[str, int] = field(
        default_factory=lambda: {
            "One Millisecond": const.EXP_RES_ONE_MILLISEC,
            "One Microsecond": const.EXP_RES_ONE_MICROSEC,
        }
    )
    readout_ports: dict[str, int] = field(
        default_factory=lambda: {"Sensitivity": 0, "Speed": 1, "Dynamic Range": 2}
    )
    exposure_range: tuple[int, int] = (0, 2**32 - 1)


@dataclass
class _Param:
    value: Any
    kind: int
    low: Any = None
    high: Any = None
    increment: Any = 0
    enum: dict[str, int] | None = None


@dataclass
class _Acquisition:
    sequence: bool
    rois: list[tuple[int, int, int, int, int, int]]
    exp_time: int
    exp_mode: int
    total: int  # frames of a sequence; ring capacity of a live acquisition
    produced: int = 0
    polls: int = 0
    triggers: int = 0
    armed: bool = False  # a trigger-first mode has had its trigger
    failed: bool = False
    aborted: bool = False
    queue: deque = field(default_factory=deque)


@dataclass
class _OpenCamera:
    spec: CameraSpec
    params: dict[int, _Param]
    acq: _Acquisition | None = None
    frame_counter: int = 0


class FakeSdk:
    """The fake PVCAM library: its cameras, its state, and the knobs a test turns."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        calls.clear()
        self.lock = threading.Condition(threading.RLock())
        """Held by every call, as the extension holds the GIL; get_frame waits on it."""
        self.cameras: list[CameraSpec] = [CameraSpec()]
        self.initialised = False
        self.handles: dict[int, _OpenCamera] = {}
        self._next_handle = 0
        self.running_status = const.EXPOSURE_IN_PROGRESS
        self.polls_per_frame = 1
        self.force_status: tuple[bool, int] | None = None
        self.fail_frame: int | None = None
        """Frame number (1-based, per acquisition) whose readout fails."""
        self.readout_failure_is_pv_fail = True
        """PVCAM 3.x: a failed readout makes pl_exp_check_status return PV_FAIL; False plays a
        driver that reports status 4 with PV_OK."""
        self.error_message = "Acquisition failed (fake PVCAM error)"
        """What ``pl_error_message`` says; real texts depend on camera and driver."""
        self.fail_on: dict[str, BaseException] = {}

    # --- test hooks -------------------------------------------------------------------------

    def external_trigger(self, hcam: int = 0) -> None:
        """An edge on the camera's trigger input."""
        with self.lock:
            acq = self.handles[hcam].acq
            if acq is not None:
                acq.triggers += 1
            self.lock.notify_all()

    def acquisition(self, hcam: int = 0) -> _Acquisition | None:
        return self.handles[hcam].acq if hcam in self.handles else None

    # --- the library's state machine -------------------------------------------------------

    def check_status(self, cam: _OpenCamera) -> tuple[bool, int]:
        """What ``pl_exp_check_status`` / ``pl_exp_check_cont_status`` would report."""
        if self.force_status is not None:
            return self.force_status
        acq = cam.acq
        if acq is None or acq.aborted:
            return True, const.READOUT_NOT_ACTIVE
        if acq.failed:
            return not self.readout_failure_is_pv_fail, const.READOUT_FAILED
        if acq.sequence and acq.produced >= acq.total:
            return True, const.READOUT_COMPLETE
        if not acq.sequence and acq.queue:
            return True, const.FRAME_AVAILABLE
        return True, self.running_status

    def wait_a_little(self, cam: _OpenCamera) -> None:
        """A poll that waits: the camera may deliver its next frame now."""
        acq = cam.acq
        if acq is None or acq.failed or acq.aborted:
            return
        acq.polls += 1
        if acq.polls % self.polls_per_frame:
            return
        if acq.sequence and acq.produced >= acq.total:
            return
        if acq.exp_mode not in _FREE_RUNNING:
            if acq.exp_mode in _TRIGGER_FIRST and acq.armed:
                pass
            elif acq.triggers == 0:
                return
            else:
                acq.triggers -= 1
                acq.armed = True
        acq.produced += 1
        if self.fail_frame is not None and acq.produced == self.fail_frame:
            acq.failed = True
            return
        cam.frame_counter += 1
        if not acq.sequence and len(acq.queue) >= acq.total:
            acq.queue.popleft()  # pyvcam's live queue: "Lost frame"
        acq.queue.append((cam.frame_counter, _image(acq.rois[0], cam.frame_counter)))


sdk = FakeSdk()


def _image(roi: tuple[int, int, int, int, int, int], number: int) -> np.ndarray:
    s1, s2, sbin, p1, p2, pbin = roi
    shape = ((p2 - p1 + 1) // pbin, (s2 - s1 + 1) // sbin)
    return np.full(shape, 100 + number, dtype=np.uint16)


def _record(name: str, *args: Any) -> None:
    with sdk.lock:
        calls.append((name, *args))
        error = sdk.fail_on.pop(name, None)
    if error is not None:
        raise error


def _pvcam_error(text: str) -> RuntimeError:
    return RuntimeError(text)


def _require_init() -> None:
    if not sdk.initialised:
        raise _pvcam_error("PVCAM library not initialized")


def _camera(hcam: int) -> _OpenCamera:
    _require_init()
    cam = sdk.handles.get(hcam)
    if cam is None:
        raise KeyError(f"Invalid camera handle ({hcam}).")
    return cam


def _params(spec: CameraSpec) -> dict[int, _Param]:
    w, h = spec.sensor
    lo, hi = spec.setpoint_range
    first_mode = next(iter(spec.exposure_modes.values()))
    return {
        const.PARAM_SER_SIZE: _Param(w, const.TYPE_UNS16),
        const.PARAM_PAR_SIZE: _Param(h, const.TYPE_UNS16),
        const.PARAM_CHIP_NAME: _Param(spec.chip, const.TYPE_CHAR_PTR),
        const.PARAM_BIT_DEPTH: _Param(spec.bit_depth, const.TYPE_INT16),
        const.PARAM_PIX_SER_SIZE: _Param(spec.pixel_nm, const.TYPE_UNS16),
        const.PARAM_PIX_PAR_SIZE: _Param(spec.pixel_nm, const.TYPE_UNS16),
        const.PARAM_TEMP: _Param(spec.temp_centi_c, const.TYPE_INT16),
        const.PARAM_TEMP_SETPOINT: _Param(spec.setpoint_centi_c, const.TYPE_INT16, lo, hi, 1),
        const.PARAM_PMODE: _Param(
            const.PMODE_NORMAL, const.TYPE_ENUM, enum={"Normal": const.PMODE_NORMAL}
        ),
        const.PARAM_EXPOSURE_MODE: _Param(
            first_mode, const.TYPE_ENUM, enum=dict(spec.exposure_modes)
        ),
        const.PARAM_EXPOSE_OUT_MODE: _Param(
            const.EXPOSE_OUT_FIRST_ROW,
            const.TYPE_ENUM,
            enum={"First Row": const.EXPOSE_OUT_FIRST_ROW, "All Rows": const.EXPOSE_OUT_ALL_ROWS},
        ),
        const.PARAM_EXP_RES: _Param(
            const.EXP_RES_ONE_MILLISEC, const.TYPE_ENUM, enum=dict(spec.exp_resolutions)
        ),
        const.PARAM_EXPOSURE_TIME: _Param(0, const.TYPE_UNS64, *spec.exposure_range, 1),
        const.PARAM_READOUT_PORT: _Param(0, const.TYPE_ENUM, enum=dict(spec.readout_ports)),
        const.PARAM_SPDTAB_INDEX: _Param(0, const.TYPE_INT16, 0, 0, 1),
        const.PARAM_SPDTAB_NAME: _Param("100 MHz", const.TYPE_CHAR_PTR),
        const.PARAM_GAIN_INDEX: _Param(1, const.TYPE_INT16, 1, 2, 1),
        const.PARAM_GAIN_NAME: _Param("Full well", const.TYPE_CHAR_PTR),
        const.PARAM_PIX_TIME: _Param(10, const.TYPE_UNS16),
        const.PARAM_BINNING_SER: _Param(1, const.TYPE_ENUM, enum=dict(spec.binnings)),
        const.PARAM_BINNING_PAR: _Param(1, const.TYPE_ENUM, enum=dict(spec.binnings)),
        const.PARAM_ROI_COUNT: _Param(1, const.TYPE_UNS16, 1, 1, 1),
        const.PARAM_METADATA_ENABLED: _Param(False, const.TYPE_BOOLEAN),
    }


# --- library and camera session ----------------------------------------------------------------


def init_pvcam() -> bool:
    _record("init_pvcam")
    if sdk.initialised:
        raise _pvcam_error("PVCAM library already initialized")
    sdk.initialised = True
    return True


def uninit_pvcam() -> bool:
    _record("uninit_pvcam")
    _require_init()
    sdk.handles.clear()  # pl_pvcam_uninit closes what the application left open
    sdk.initialised = False
    return True


def get_pvcam_version() -> str:
    _record("get_pvcam_version")
    return "3.10.0"


def get_cam_fw_version(hcam: int) -> str:
    _record("get_cam_fw_version", hcam)
    _camera(hcam)
    return "1.0"


def get_cam_total() -> int:
    _record("get_cam_total")
    _require_init()
    return len(sdk.cameras)


def get_cam_name(cam_num: int) -> str:
    _record("get_cam_name", cam_num)
    _require_init()
    if not 0 <= cam_num < len(sdk.cameras):
        raise _pvcam_error(f"Invalid camera index {cam_num}")
    return sdk.cameras[cam_num].name


def open_camera(cam_name: str) -> int:
    _record("open_camera", cam_name)
    _require_init()
    spec = next((c for c in sdk.cameras if c.name == cam_name), None)
    if spec is None:
        raise _pvcam_error(f"Camera {cam_name!r} not found")
    if any(c.spec is spec for c in sdk.handles.values()):
        raise _pvcam_error("Camera already open (OPEN_EXCLUSIVE)")
    hcam = sdk._next_handle
    sdk._next_handle += 1
    sdk.handles[hcam] = _OpenCamera(spec, _params(spec))
    return hcam


def close_camera(hcam: int) -> None:
    _record("close_camera", hcam)
    _camera(hcam)
    del sdk.handles[hcam]


# --- parameters --------------------------------------------------------------------------------


def _param(hcam: int, param_id: int) -> _Param:
    param = _camera(hcam).params.get(param_id)
    if param is None:
        raise AttributeError(
            f"Invalid setting for this camera. Parameter ID 0x{param_id:08X} is not available."
        )
    return param


def get_param(hcam: int, param_id: int, param_attr: int) -> Any:
    _record("get_param", hcam, param_id, param_attr)
    if param_attr == const.ATTR_AVAIL:
        return param_id in _camera(hcam).params
    param = _param(hcam, param_id)
    if param_attr == const.ATTR_CURRENT:
        return param.value
    if param_attr == const.ATTR_TYPE:
        return param.kind
    if param_attr == const.ATTR_COUNT:
        if param.enum is not None:
            return len(param.enum)
        if param.low is not None and param.increment:
            return (param.high - param.low) // param.increment + 1
        return 0
    if param_attr == const.ATTR_MIN:
        return param.low
    if param_attr == const.ATTR_MAX:
        return param.high
    if param_attr == const.ATTR_INCREMENT:
        return param.increment
    if param_attr == const.ATTR_DEFAULT:
        return param.value
    raise _pvcam_error(f"Attribute {param_attr} not supported by the fake")


def set_param(hcam: int, param_id: int, value: Any) -> None:
    _record("set_param", hcam, param_id, value)
    param = _param(hcam, param_id)
    if param.enum is not None and value not in param.enum.values():
        raise _pvcam_error(f"Invalid value {value} for parameter 0x{param_id:08X}")
    if param.low is not None and not param.low <= value <= param.high:
        raise _pvcam_error(f"Value {value} out of range for parameter 0x{param_id:08X}")
    param.value = value


def check_param(hcam: int, param_id: int) -> bool:
    _record("check_param", hcam, param_id)
    return param_id in _camera(hcam).params


def read_enum(hcam: int, param_id: int) -> dict[str, int]:
    _record("read_enum", hcam, param_id)
    param = _param(hcam, param_id)
    if param.enum is None:
        raise _pvcam_error(f"Parameter 0x{param_id:08X} is not an enumeration")
    return dict(param.enum)


def reset_pp(hcam: int) -> None:
    _record("reset_pp", hcam)
    _camera(hcam)


def set_exp_modes(hcam: int, mode: int) -> None:
    """pyvcam sets the exposure (and expose-out) mode by setting up a one-frame sequence."""
    _record("set_exp_modes", hcam, mode)
    cam = _camera(hcam)
    base, out = (mode & 0xFF00, mode & 0xFF) if mode >= 0x100 else (mode, None)
    if base not in cam.params[const.PARAM_EXPOSURE_MODE].enum.values():
        raise _pvcam_error(f"Exposure mode {base} not supported")
    cam.params[const.PARAM_EXPOSURE_MODE].value = base
    if out is not None:
        cam.params[const.PARAM_EXPOSE_OUT_MODE].value = out


# --- acquisition -------------------------------------------------------------------------------


def _regions(cam: _OpenCamera, roi_list: list) -> list[tuple[int, int, int, int, int, int]]:
    if not isinstance(roi_list, list) or not roi_list:
        raise ValueError(f"Invalid ROI count ({len(roi_list) if roi_list else 0}).")
    w, h = cam.spec.sensor
    rois = []
    for roi in roi_list:
        try:
            region = tuple(int(getattr(roi, k)) for k in ("s1", "s2", "sbin", "p1", "p2", "pbin"))
        except (AttributeError, TypeError, ValueError):
            raise ValueError("Failed to parse ROI members.") from None
        s1, s2, sbin, p1, p2, pbin = region
        if sbin < 1 or pbin < 1:
            raise ValueError("Failed to parse ROI members.")
        if not (0 <= s1 <= s2 < w and 0 <= p1 <= p2 < h):
            raise _pvcam_error("Region outside the sensor")
        rois.append(region)
    return rois


def _start(cam: _OpenCamera, sequence: bool, roi_list, exp_time, exp_mode, total) -> int:
    if cam.acq is not None and not cam.acq.aborted:
        raise _pvcam_error("Acquisition already in progress")
    rois = _regions(cam, roi_list)
    low, high = cam.spec.exposure_range
    if not isinstance(exp_time, int) or not low <= exp_time <= high:
        raise ValueError("Invalid parameters.")
    base = exp_mode & 0xFF00 if exp_mode >= 0x100 else exp_mode
    if base not in cam.params[const.PARAM_EXPOSURE_MODE].enum.values():
        raise _pvcam_error(f"Exposure mode {exp_mode} not supported")
    if sequence and not 1 <= total <= 65535:
        raise ValueError("Invalid parameters.")
    cam.acq = _Acquisition(sequence, rois, exp_time, base, total)
    cam.params[const.PARAM_EXPOSURE_TIME].value = exp_time
    s1, s2, sbin, p1, p2, pbin = rois[0]
    return ((s2 - s1 + 1) // sbin) * ((p2 - p1 + 1) // pbin) * 2


def start_seq(hcam: int, roi_list: list, exp_time: int, exp_mode: int, num_frames: int) -> int:
    _record("start_seq", hcam, exp_time, exp_mode, num_frames)
    with sdk.lock:
        return _start(_camera(hcam), True, roi_list, exp_time, exp_mode, num_frames)


def start_live(
    hcam: int,
    roi_list: list,
    exp_time: int,
    exp_mode: int,
    buffer_frame_count: int,
    stream_to_disk_path: str | None = None,
) -> int:
    _record("start_live", hcam, exp_time, exp_mode, buffer_frame_count, stream_to_disk_path)
    with sdk.lock:
        return _start(_camera(hcam), False, roi_list, exp_time, exp_mode, buffer_frame_count)


def setup_seq(hcam: int, roi_list: list, exp_time: int, exp_mode: int, num_frames: int) -> int:
    """Sets up a sequence; ``start_set_seq`` starts it (frames flow from then on)."""
    _record("setup_seq", hcam, exp_time, exp_mode, num_frames)
    with sdk.lock:
        return _start(_camera(hcam), True, roi_list, exp_time, exp_mode, num_frames)


def setup_live(
    hcam: int,
    roi_list: list,
    exp_time: int,
    exp_mode: int,
    buffer_frame_count: int,
    stream_to_disk_path: str | None = None,
) -> int:
    _record("setup_live", hcam, exp_time, exp_mode, buffer_frame_count, stream_to_disk_path)
    with sdk.lock:
        return _start(_camera(hcam), False, roi_list, exp_time, exp_mode, buffer_frame_count)


def start_set_seq(hcam: int) -> None:
    _record("start_set_seq", hcam)
    if _camera(hcam).acq is None:
        raise _pvcam_error("Acquisition not set up")


def start_set_live(hcam: int) -> None:
    _record("start_set_live", hcam)
    if _camera(hcam).acq is None:
        raise _pvcam_error("Acquisition not set up")


def check_frame_status(hcam: int) -> str:
    _record("check_frame_status", hcam)
    with sdk.lock:
        cam = _camera(hcam)
        ok, status = sdk.check_status(cam)
        sequence = cam.acq is None or cam.acq.sequence
    if not ok:
        raise _pvcam_error(sdk.error_message)
    names = {
        const.READOUT_NOT_ACTIVE: "READOUT_NOT_ACTIVE",
        const.EXPOSURE_IN_PROGRESS: "EXPOSURE_IN_PROGRESS",
        const.READOUT_IN_PROGRESS: "READOUT_IN_PROGRESS",
        const.FRAME_AVAILABLE: "READOUT_COMPLETE" if sequence else "FRAME_AVAILABLE",
        const.READOUT_FAILED: "READOUT_FAILED",
    }
    if status not in names:
        raise ValueError(f"Unrecognized frame status ({status}).")
    return names[status]


def get_frame(
    hcam: int, roi_list: list, typenum: int, timeout_ms: int, oldest_frame: bool
) -> tuple[dict, float, int]:
    _record("get_frame", hcam, timeout_ms, oldest_frame)
    with sdk.lock:
        cam = _camera(hcam)
        if timeout_ms != 0:
            sdk.wait_a_little(cam)
            acq = cam.acq
            if acq is not None and not acq.queue and not acq.failed:
                # No frame yet: block as pyvcam does, until woken or the timeout ends.
                woken = sdk.lock.wait(_WAIT_FOREVER_S if timeout_ms < 0 else timeout_ms / 1000)
                if woken and cam.acq is acq:
                    sdk.wait_a_little(cam)
        return _frame_or_error(cam, oldest_frame, typenum)


def _frame_or_error(cam: _OpenCamera, oldest_frame: bool, typenum: int) -> tuple[dict, float, int]:
    ok, status = sdk.check_status(cam)
    acq = cam.acq
    if not ok:
        raise _pvcam_error(sdk.error_message)
    if status == const.READOUT_FAILED:
        raise RuntimeError("Frame readout failed.")
    if status == const.READOUT_NOT_ACTIVE:
        raise RuntimeError("Acquisition not active.")
    if acq is None or not acq.queue:
        raise RuntimeError(
            "Frame timeout. Verify the timeout exceeds the exposure time. If applicable, "
            "check external trigger source."
        )
    count, data = acq.queue.popleft() if oldest_frame else acq.queue[-1]
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if np.dtype(t).num == typenum)
    return {"pixel_data": [data.astype(dtype)]}, 0.0, count


def _end(hcam: int) -> None:
    with sdk.lock:
        cam = _camera(hcam)
        if cam.acq is not None:
            cam.acq.aborted = True
            cam.acq = None
        sdk.lock.notify_all()  # wakes a waiting get_frame, as pvc.abort does


def finish_seq(hcam: int) -> None:
    _record("finish_seq", hcam)
    _end(hcam)


def abort(hcam: int) -> None:
    _record("abort", hcam)
    _end(hcam)


def stop_live(hcam: int) -> None:
    _record("stop_live", hcam)
    _end(hcam)


def reset_frame_counter(hcam: int) -> None:
    _record("reset_frame_counter", hcam)
    _camera(hcam).frame_counter = 0


def sw_trigger(hcam: int) -> None:
    _record("sw_trigger", hcam)
    with sdk.lock:
        acq = _camera(hcam).acq
        if acq is None or acq.exp_mode not in _SOFTWARE:
            raise ValueError("Failed to perform software trigger.")
        acq.triggers += 1
        sdk.lock.notify_all()
