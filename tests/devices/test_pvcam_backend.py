"""The real PVCAM backend (PyVcamBackend) against a fake ``pyvcam`` with the real API surface.

The fake (tests/devices/fake_pyvcam, sources in its ``pyvcam/__init__.py``) records every call,
so these tests check what the backend asks of the SDK and in which order, and how it maps the
SDK's answers, statuses and failures, directly and through the camera device under a RunEngine.
The status values and their moments come from tests/transcripts/pvcam.yaml, which the
simulator's tests (tests/sim/test_pvcam_sim.py) replay too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
import yaml

from daqbridge.devices._hdf5 import FRAME_NUMBER_DATASET, FRAMES_DATASET
from daqbridge.devices.core import call_sync
from daqbridge.devices.pvcam import PvcamCamera
from daqbridge.devices.pvcam_backend import ExposureMode, ImageStatus, PyVcamBackend, Roi
from daqbridge.errors import InstrumentError, InstrumentFault
from tests.devices.fake_pyvcam_support import names

TRANSCRIPT = yaml.safe_load(
    (Path(__file__).parents[1] / "transcripts" / "pvcam.yaml").read_text(encoding="utf-8")
)
SENSOR = (64, 48)  # the fake camera's (width, height)


@pytest.fixture
def make_backend(pvc) -> Iterator[Callable[..., PyVcamBackend]]:
    """Build PyVcamBackends on the fake; every one is closed (SDK released) after the test."""
    made: list[PyVcamBackend] = []

    def make(label: str = "camera") -> PyVcamBackend:
        backend = PyVcamBackend(label=label)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def on_loop(work: Any, timeout: float = 15.0) -> Any:
    """Run on the RunEngine's event loop (the camera lives there), bounded."""
    return call_sync(work, timeout=timeout)


@pytest.fixture
def make_cam(make_backend, tmp_path, RE) -> Iterator[Callable[..., PvcamCamera]]:  # noqa: N803
    """Cameras on PyVcamBackend, connected on the RunEngine's loop (the RE fixture runs it)."""
    made: list[PvcamCamera] = []

    def make(**kw) -> PvcamCamera:
        kw.setdefault("exposure_ms", 5)
        kw.setdefault("camera", "PrimeBSI")
        kw.setdefault("trigger_mode", "EXT_TRIG_INTERNAL")
        cam = PvcamCamera("cam", make_backend(), frames_dir=tmp_path / "frames", **kw)
        made.append(cam)
        on_loop(cam.connect(timeout=10))
        return cam

    yield make
    for cam in made:
        cam.close()


def started(backend: PyVcamBackend, *, live: bool, mode=ExposureMode.EXT_TRIG_INTERNAL) -> None:
    backend.setup(Roi(0, 63, 0, 47), (1, 1), 5, mode, None if live else 2, live, 4)
    backend.start()


# pvcMethods of Photometrics/PyVCAM src/pyvcam/pvcmodule.cpp, and the Camera members the backend
# uses (src/pyvcam/camera.py): the fake must offer every one, or it proves nothing.
PVC_FUNCTIONS = """init_pvcam uninit_pvcam get_pvcam_version get_cam_fw_version get_cam_total
    get_cam_name open_camera close_camera get_param set_param check_param setup_live setup_seq
    start_set_live start_set_seq start_live start_seq check_frame_status get_frame finish_seq
    abort stop_live reset_frame_counter set_exp_modes read_enum reset_pp sw_trigger""".split()
CAMERA_MEMBERS = """get_available_camera_names detect_camera select_camera open close
    check_frame_status get_param set_param check_param read_enum reset_rois set_roi poll_frame
    get_frame start_live start_seq finish sw_trigger name is_open chip_name sensor_size
    bit_depth temp temp_setpoint exp_res exp_resolutions exp_mode exp_modes exp_time binning
    binnings rois readout_port readout_ports speed gain port_speed_gain_table""".split()


def test_the_fake_has_pyvcams_api_surface(pvc):
    from pyvcam.camera import Camera

    assert [f for f in PVC_FUNCTIONS if not callable(getattr(pvc, f, None))] == []
    assert [m for m in CAMERA_MEMBERS if not hasattr(Camera, m)] == []


# --- session -------------------------------------------------------------------------------------


def test_open_and_close_follow_the_sdk_order(make_backend, pvc):
    backend = make_backend()
    backend.open("PrimeBSI")
    assert backend.name == "PrimeBSI" and backend.is_open
    assert backend.sensor_size == SENSOR
    assert backend.pixel_size_um == 6.5
    assert backend.temperature_c == backend.temperature_setpoint_c == -20.0
    assert backend.allowed_binnings == [(1, 1), (2, 2), (4, 4)]
    assert ExposureMode.SOFTWARE_EDGE in backend.exposure_modes
    backend.close()
    sdk_calls = [n for n in names(pvc.calls) if not n.startswith("Camera.")]
    assert sdk_calls[0] == "init_pvcam"
    assert sdk_calls[-2:] == ["close_camera", "uninit_pvcam"]
    assert sdk_calls.count("init_pvcam") == sdk_calls.count("uninit_pvcam") == 1
    assert sdk_calls.index("get_cam_total") < sdk_calls.index("open_camera")
    assert ("Camera.select_camera", "PrimeBSI") in pvc.calls
    assert not pvc.sdk.initialised and not pvc.sdk.handles


def test_setup_hands_exposure_region_and_binning_to_the_sdk(make_backend, pvc):
    backend = make_backend()
    backend.open()
    backend.exposure_resolution = "us"
    backend.setup(Roi(8, 39, 4, 35), (2, 2), 1500, ExposureMode.SOFTWARE_FIRST, 3, False, 3)
    backend.start()
    camera_calls = [c for c in pvc.calls if c[0].startswith("Camera.")]
    last_reset = max(i for i, c in enumerate(camera_calls) if c[0] == "Camera.reset_rois")
    setup = camera_calls[last_reset:]
    assert setup[:2] == [("Camera.reset_rois",), ("Camera.set_roi", 8, 4, 32, 32)]
    assert ("Camera.binning=", (2, 2)) in setup
    assert ("Camera.exp_mode=", int(ExposureMode.SOFTWARE_FIRST)) in setup
    assert ("Camera.exp_time=", 1500) in setup
    assert ("Camera.start_seq", 1500, 3, True) in setup
    const = sys.modules["pyvcam.constants"]
    assert ("set_param", 0, const.PARAM_EXP_RES, const.EXP_RES_ONE_MICROSEC) in pvc.calls
    assert ("start_seq", 0, 1500, int(ExposureMode.SOFTWARE_FIRST), 3) in pvc.calls
    acquisition = pvc.sdk.acquisition(0)
    assert acquisition.rois == [(8, 39, 2, 4, 35, 2)]  # (s1, s2, sbin, p1, p2, pbin)
    backend.sw_trigger()
    frame = backend.poll_frame(1.0)
    assert frame.data.shape == (16, 16) and frame.frame_number == 1


# --- status values (tests/transcripts/pvcam.yaml) ----------------------------------------------


@pytest.mark.parametrize(
    "row",
    TRANSCRIPT["check_frame_status"],
    ids=lambda r: f"{r['mode']}-{r['value']}-{'ok' if r['ok'] else 'PV_FAIL'}",
)
def test_every_status_pvcam_reports_maps_onto_image_status(make_backend, pvc, row):
    backend = make_backend()
    backend.open()
    started(backend, live=row["mode"] == "live")
    pvc.sdk.force_status = (row["ok"], row["value"])
    # The fake answers as pyvcam does (the transcript's `pyvcam` column)...
    try:
        said = pvc.check_frame_status(0)
    except (RuntimeError, ValueError) as exc:
        said = type(exc).__name__ if isinstance(exc, RuntimeError) else f"ValueError: {exc}"
    assert said == row["pyvcam"]
    # ...and the backend turns every answer into the status PVCAM means, never an exception.
    assert backend.status() is ImageStatus[row["status"]]


def test_a_status_pvcam_does_not_define_is_an_error_naming_it(make_backend, pvc):
    backend = make_backend()
    backend.open()
    started(backend, live=False)
    pvc.sdk.force_status = (True, 6)  # MAX_CAMERA_STATUS: the enum's end marker, never a status
    with pytest.raises(InstrumentError, match=r"status 6.*pvcam\.h") as info:
        backend.status()
    assert info.value.instrument == "camera" and info.value.resource == "pvcam://PrimeBSI"


@pytest.mark.parametrize("name", sorted(TRANSCRIPT["timelines"]))
def test_status_timelines_read_back_through_pyvcam(make_backend, pvc, name):
    """Each (moment, status) pair the simulator must produce, reported by the SDK, reads back
    as the same ImageStatus through the real backend."""
    timeline = TRANSCRIPT["timelines"][name]
    s = timeline["setup"]
    backend = make_backend()
    backend.open()
    for action, expected in timeline["steps"]:
        pvc.sdk.force_status = None  # the fake's own state machine runs the action
        if action == "setup":
            backend.setup(
                Roi(0, 63, 0, 47),
                (1, 1),
                s.get("exposure", 5),
                ExposureMode[s["exposure_mode"]],
                s["n_frames"],
                s["continuous"],
                s.get("ring_frames", 4),
            )
        elif action == "take frame":
            assert backend.poll_frame(1.0) is not None
        elif action == "trigger":
            backend.sw_trigger()
        else:
            getattr(backend, action)()
        value = TRANSCRIPT["statuses"][expected]
        pvc.sdk.force_status = (expected != "READOUT_FAILED", value)  # PV_FAIL with a failure
        assert backend.status() is ImageStatus[expected], (action, expected)


# --- acquisition through the camera device ------------------------------------------------------


def test_acquisition_in_progress_between_frames_runs_a_healthy_count(make_cam, pvc, RE, docs):
    """A PVCAM 2.x driver says ACQUISITION_IN_PROGRESS while running (pyvcam: ValueError
    "Unrecognized frame status (5)."); every point must still be written, frame by frame."""
    pvc.sdk.running_status = 5
    pvc.sdk.polls_per_frame = 2  # every other poll comes back empty: the device asks the status
    cam = make_cam(frames_per_point=3, binning=2, roi=(0, 31, 0, 23))
    RE(bp.count([cam], num=2))
    docs.validate()
    (resource,) = docs.of("stream_resource")
    with h5py.File(resource["uri"][len("file://localhost") :], "r", swmr=True) as f:
        frames, numbers = f[FRAMES_DATASET][:], f[FRAME_NUMBER_DATASET][:]
    assert frames.shape == (6, 12, 16)
    assert list(numbers) == [1, 2, 3, 1, 2, 3]  # the frame counter restarts with each point
    np.testing.assert_array_equal(frames[:, 0, 0], 100 + numbers)
    assert ("check_frame_status", 0) in pvc.calls  # the device did ask between frames
    seqs = [c for c in pvc.calls if c[0] == "start_seq"]
    assert seqs == [("start_seq", 0, 5, int(ExposureMode.EXT_TRIG_INTERNAL), 3)] * 2
    assert names(pvc.calls).count("finish_seq") == 2


@pytest.mark.parametrize("pv_fail", [True, False], ids=["PV_FAIL", "status-4"])
def test_a_failed_readout_is_an_instrument_fault_naming_the_camera(make_cam, pvc, pv_fail):
    """PVCAM 3.x reports a failed readout as PV_FAIL (pyvcam: RuntimeError with PVCAM's own
    message); older drivers as status 4 ("Frame readout failed."). Both are READOUT_FAILED."""
    cam = make_cam(frames_per_point=2)
    pvc.sdk.fail_frame = 2
    pvc.sdk.readout_failure_is_pv_fail = pv_fail
    on_loop(lambda: cam.stage())
    try:
        with pytest.raises(InstrumentFault) as info:
            on_loop(lambda: cam.trigger())
        assert info.value.code == int(ImageStatus.READOUT_FAILED)
        assert "PrimeBSI" in str(info.value) and "frame 2 of 2" in str(info.value)
        assert on_loop(cam.get_index()) == 0  # nothing written for the failed point
        pvc.sdk.fail_frame = None
        on_loop(lambda: cam.trigger())
        assert on_loop(cam.get_index()) == 1
    finally:
        on_loop(lambda: cam.unstage())
    assert cam.backend.status() is ImageStatus.READOUT_NOT_ACTIVE


# --- closing always releases the SDK ------------------------------------------------------------


def test_close_releases_camera_and_sdk_even_when_the_sdk_fails(make_backend, pvc):
    backend = make_backend()
    backend.open()
    started(backend, live=True)
    pvc.sdk.fail_on["abort"] = ValueError("Failed to abort")  # pyvcam's text for pl_exp_abort
    backend.close()  # no raw SDK exception reaches the caller
    assert names(pvc.calls)[-4:] == ["abort", "Camera.close", "close_camera", "uninit_pvcam"]
    assert not pvc.sdk.initialised and not pvc.sdk.handles and not backend.is_open

    other = make_backend()
    other.open()
    pvc.sdk.fail_on["close_camera"] = RuntimeError("Camera not responding")
    other.close()
    assert names(pvc.calls)[-1] == "uninit_pvcam" and not pvc.sdk.initialised

    third = make_backend()
    pvc.sdk.fail_on["open_camera"] = RuntimeError("Camera already open (OPEN_EXCLUSIVE)")
    with pytest.raises(InstrumentError, match="could not open camera 'PrimeBSI'"):
        third.open()
    assert names(pvc.calls)[-1] == "uninit_pvcam" and not pvc.sdk.initialised


def test_stop_during_a_point_never_leaks_an_sdk_exception(make_cam, pvc, wait_until):
    cam = make_cam(trigger_mode="EDGE_RISING", timeout=30)  # waits for a trigger that never comes
    on_loop(lambda: cam.stage())
    try:
        status = on_loop(lambda: (cam.trigger(),))[0]  # started, not waited for
        assert wait_until(lambda: pvc.sdk.acquisition(0) is not None)
        pvc.sdk.fail_on["finish_seq"] = ValueError("Failed to finish sequence")
        on_loop(cam.stop())
        with pytest.raises(InstrumentError, match="stopped by stop"):
            on_loop(lambda: status)
    finally:
        on_loop(lambda: cam.unstage())
    cam.close()
    assert names(pvc.calls)[-1] == "uninit_pvcam" and not pvc.sdk.initialised
