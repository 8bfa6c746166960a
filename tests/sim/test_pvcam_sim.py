"""The simulated PVCAM backend, and the real backend's behaviour where pyvcam is missing."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from daqbridge.devices.pvcam_backend import (
    CameraBackend,
    ExposureMode,
    ImageStatus,
    PyVcamBackend,
    Roi,
    load_backend,
)
from daqbridge.errors import ConfigError, InstrumentError, InstrumentFault, ValueRejected
from daqbridge.sim.pvcam import FULL_FRAME_READOUT_S, SimulatedCameraBackend

SMALL = Roi(0, 63, 0, 63)  # cheap frames for timing tests
TRANSCRIPT = yaml.safe_load(
    (Path(__file__).parents[1] / "transcripts" / "pvcam.yaml").read_text(encoding="utf-8")
)


@pytest.fixture
def make_cam():
    cams: list[SimulatedCameraBackend] = []

    def _make(**kw) -> SimulatedCameraBackend:
        cam = SimulatedCameraBackend(**kw)
        cam.open()
        cams.append(cam)
        return cam

    yield _make
    for cam in cams:
        cam.close()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def drain(cam, n: int, timeout: float = 5.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline:
        frame = cam.poll_frame(0.5)
        if frame is not None:
            frames.append(frame)
    return frames


# --- session and parameters --------------------------------------------------------------------


def test_prime_bsi_parameters(make_cam):
    cam = make_cam()
    assert isinstance(cam, CameraBackend)
    assert cam.camera_names() == ["PrimeBSI"]
    assert cam.name == "PrimeBSI"
    assert cam.sensor_size == (2048, 2048)
    assert cam.pixel_size_um == 6.5
    assert cam.bit_depth == 16
    assert cam.chip_name
    assert cam.exposure_resolution == "ms"
    assert cam.allowed_binnings == [(1, 1), (2, 2), (4, 4)]
    assert cam.temperature_c == cam.temperature_setpoint_c == -20.0
    assert cam.readout_ports and cam.speeds and cam.gains
    assert ExposureMode.EXT_TRIG_INTERNAL in cam.exposure_modes
    assert cam.status() == ImageStatus.NOT_ACTIVE
    assert cam.resource == "pvcam-sim://PrimeBSI"


def test_constants_match_pvcam():
    assert ExposureMode.TIMED == 0 and ExposureMode.INT_STROBE == 6
    assert ExposureMode.EXT_TRIG_INTERNAL == 1792 and ExposureMode.SOFTWARE_EDGE == 3072
    assert ImageStatus.FRAME_AVAILABLE is ImageStatus.READOUT_COMPLETE


def test_image_status_has_every_value_of_pvcam_h():
    statuses = TRANSCRIPT["statuses"]
    assert {name: int(ImageStatus[name]) for name in statuses} == statuses
    assert sorted({int(s) for s in ImageStatus}) == sorted(set(statuses.values()))


def _run_timeline(cam: SimulatedCameraBackend, timeline: dict) -> list[tuple[str, str]]:
    """Play one timeline of tests/transcripts/pvcam.yaml; returns (action, status) as seen."""
    s = timeline["setup"]
    seen = []
    for action, expected in timeline["steps"]:
        if action == "setup":
            cam.setup(
                SMALL,
                (1, 1),
                s.get("exposure", 10),
                ExposureMode[s["exposure_mode"]],
                s["n_frames"],
                s["continuous"],
                s.get("ring_frames", 4),
            )
            if timeline.get("fail_readout"):
                cam.fail_next_readout()
        elif action == "take frame":
            assert cam.poll_frame(5.0) is not None
        elif action == "trigger":
            cam.sw_trigger()
        else:
            getattr(cam, action)()
        wait_for(lambda expected=expected: cam.status() is ImageStatus[expected])
        seen.append((action, cam.status().name))
    return seen


@pytest.mark.parametrize("name", sorted(TRANSCRIPT["timelines"]))
def test_status_timelines(make_cam, name):
    """Every PVCAM status at the moment a camera reports it (tests/transcripts/pvcam.yaml)."""
    timeline = TRANSCRIPT["timelines"][name]
    if timeline.get("slow_readout"):
        cam = make_cam(speed=1.0, full_frame_readout_s=3600.0)
    else:
        cam = make_cam(speed=math.inf)
    expected = [(a, ImageStatus[st].name) for a, st in timeline["steps"]]
    assert _run_timeline(cam, timeline) == expected


def test_parameters_need_an_open_camera():
    cam = SimulatedCameraBackend()
    with pytest.raises(InstrumentError, match="not open"):
        _ = cam.sensor_size
    cam.close()  # closing a closed camera is harmless


def test_open_is_exclusive_and_names_are_checked(make_cam):
    first = make_cam()
    second = SimulatedCameraBackend()
    with pytest.raises(InstrumentError, match="already open"):
        second.open("PrimeBSI")
    with pytest.raises(InstrumentError, match="no PVCAM camera named 'Prime95'.*PrimeBSI"):
        second.open("Prime95")
    first.close()
    second.open()
    assert second.is_open
    second.close()


def test_temperature_setpoint_limits(make_cam):
    cam = make_cam(label="cam1")
    cam.temperature_setpoint_c = -10
    assert cam.temperature_setpoint_c == -10.0
    with pytest.raises(ValueRejected, match="cam1.*-40"):
        cam.temperature_setpoint_c = -40


# --- setup validation --------------------------------------------------------------------------


def test_roi_frame_shape():
    roi = Roi(10, 109, 0, 49)
    assert (roi.width, roi.height) == (100, 50)
    assert roi.frame_shape((2, 1)) == (50, 50)
    assert Roi.full((2048, 2048)).frame_shape((4, 4)) == (512, 512)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"roi": Roi(0, 2048, 0, 99)}, r"PrimeBSI.*outside the 2048 x 2048 sensor"),
        ({"roi": Roi(500, 100, 0, 99)}, r"reversed"),
        ({"binning": (3, 3)}, r"binning 3x3 is not supported.*1x1, 2x2, 4x4"),
        ({"binning": (0, 1)}, r"integers >= 1"),
        ({"roi": Roi(0, 100, 0, 99), "binning": (2, 2)}, r"span 101 px.*2-pixel bins.*s2=99"),
        ({"exposure": 20.5}, r"not a whole number of ms.*'us'.*20500 us"),
        ({"exposure": -1}, r"exposure must be"),
        ({"exposure": math.nan}, r"exposure must be"),
        ({"exposure_mode": 7}, r"exposure mode 7 is not supported.*EDGE_RISING"),
        ({"n_frames": None}, r"n_frames between 1 and 65535"),
        ({"n_frames": 0}, r"n_frames between 1 and 65535"),
        ({"continuous": True, "n_frames": 5}, r"n_frames must be None"),
        ({"ring_frames": 0}, r"ring_frames"),
        ({"roi": None, "n_frames": 1000}, r"GiB.*continuous mode"),
    ],
)
def test_invalid_setup_is_rejected_clearly(make_cam, kwargs, pattern):
    cam = make_cam()
    args = dict(
        roi=SMALL,
        binning=(1, 1),
        exposure=10,
        exposure_mode=ExposureMode.TIMED,
        n_frames=3,
        continuous=False,
        ring_frames=4,
    )
    args.update(kwargs)
    with pytest.raises(ValueRejected, match=pattern) as info:
        cam.setup(**args)
    assert info.value.fix  # every refusal says what to do


def test_roi_needs_integers():
    with pytest.raises(ValueRejected, match="integer"):
        Roi(0.5, 10, 0, 10)


def test_exposure_resolution_changes_units(make_cam):
    cam = make_cam()
    cam.exposure_resolution = "us"
    setup = cam.setup(SMALL, (1, 1), 20500, 0, 1, False, 4)
    assert setup.exposure == 20500 and setup.exposure_s == pytest.approx(0.0205)
    cam.exposure_resolution = "s"
    assert cam.setup(SMALL, (1, 1), 2, 0, 1, False, 4).exposure_s == 2.0
    with pytest.raises(ValueRejected, match="'ns'"):
        cam.exposure_resolution = "ns"


def test_start_needs_setup_and_setup_needs_idle(make_cam):
    cam = make_cam(speed=math.inf)
    with pytest.raises(InstrumentError, match="setup"):
        cam.start()
    cam.setup(SMALL, (1, 1), 10, 0, None, True, 2)
    cam.start()
    with pytest.raises(InstrumentError, match="already running"):
        cam.start()
    with pytest.raises(InstrumentError, match="halt"):
        cam.setup(SMALL, (1, 1), 10, 0, None, True, 2)
    cam.abort()


# --- acquisition -------------------------------------------------------------------------------


def test_sequence_frames_have_roi_binning_shape_and_dtype(make_cam):
    cam = make_cam(speed=math.inf)
    setup = cam.setup(Roi(100, 499, 200, 399), (2, 2), 10, ExposureMode.TIMED, 5, False, 4)
    assert setup.frame_shape == (100, 200)
    cam.start()
    frames = drain(cam, 5)
    assert [f.frame_number for f in frames] == [1, 2, 3, 4, 5]
    for f in frames:
        assert f.data.shape == (100, 200) and f.data.dtype == np.uint16
    assert wait_for(lambda: cam.status() == ImageStatus.READOUT_COMPLETE)
    assert cam.poll_frame(0.05) is None  # the sequence is over and drained
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps)
    # Frames differ by the frame-number offset, so a device can tell them apart.
    assert np.all(frames[1].data.astype(int) - frames[0].data == 1)


def test_images_are_deterministic_and_binning_sums(make_cam):
    a = make_cam(speed=math.inf, seed=3)
    a.setup(SMALL, (1, 1), 10, 0, 1, False, 4)
    a.start()
    first = drain(a, 1)[0].data
    a.close()
    b = make_cam(speed=math.inf, seed=3)
    b.setup(SMALL, (1, 1), 10, 0, 1, False, 4)
    b.start()
    assert np.array_equal(drain(b, 1)[0].data, first)
    b.setup(SMALL, (2, 2), 10, 0, 1, False, 4)
    b.start()
    binned = drain(b, 1)[0].data.astype(float)
    assert binned.shape == (32, 32)
    assert binned.mean() == pytest.approx(4 * first.astype(float).mean(), rel=0.02)


def test_signal_grows_with_exposure(make_cam):
    cam = make_cam(speed=math.inf)
    centre = Roi(992, 1055, 992, 1055)
    means = []
    for exposure in (5, 50):
        cam.setup(centre, (1, 1), exposure, 0, 1, False, 4)
        cam.start()
        means.append(float(drain(cam, 1)[0].data.mean()))
    assert means[1] > 5 * (means[0] - 100)  # bias ~100 counts, signal scales with exposure


def test_frame_period_matches_lab_camera(make_cam):
    cam = make_cam()
    cam.setup(None, (1, 1), 20, 0, 10, False, 4)
    assert 1 / cam.frame_period_s() == pytest.approx(47.0, abs=0.5)
    cam.setup(Roi(0, 2047, 0, 511), (1, 1), 20, 0, 10, False, 4)
    assert cam.readout_time_s() == pytest.approx(FULL_FRAME_READOUT_S / 4)
    cam.setup(None, (4, 4), 20, 0, 10, False, 4)
    assert 1 / cam.frame_period_s() == pytest.approx(47.0, abs=0.5)  # sCMOS: binning is free


def test_frame_timing_follows_exposure(make_cam):
    cam = make_cam(speed=1.0)
    n, exposure_ms = 8, 40
    cam.setup(SMALL, (1, 1), exposure_ms, 0, n, False, 4)
    expected = n * cam.frame_period_s()
    started = time.monotonic()
    cam.start()
    frames = drain(cam, n, timeout=10 + expected)
    elapsed = time.monotonic() - started
    assert len(frames) == n
    assert elapsed >= 0.9 * expected  # never faster than the camera can expose
    assert elapsed < expected + 3.0  # generous: the machine is shared


def test_speed_factor_scales_time(make_cam):
    cam = make_cam(speed=20.0)
    cam.setup(SMALL, (1, 1), 500, 0, 4, False, 4)  # 2 s of camera time
    started = time.monotonic()
    cam.start()
    assert len(drain(cam, 4, timeout=10)) == 4
    elapsed = time.monotonic() - started
    assert 0.09 <= elapsed < 1.9


def test_status_progression(make_cam):
    cam = make_cam(speed=1.0, full_frame_readout_s=0.15)
    cam.setup(None, (4, 4), 100, 0, 2, False, 4)
    assert cam.status() == ImageStatus.NOT_ACTIVE
    cam.start()
    seen = [cam.status()]
    deadline = time.monotonic() + 5
    while seen[-1] != ImageStatus.READOUT_COMPLETE and time.monotonic() < deadline:
        time.sleep(0.01)
        if (status := cam.status()) != seen[-1]:
            seen.append(status)
    assert seen[0] == ImageStatus.EXPOSURE_IN_PROGRESS
    assert ImageStatus.READOUT_IN_PROGRESS in seen
    assert seen[-1] == ImageStatus.READOUT_COMPLETE
    assert len(drain(cam, 2)) == 2
    cam.halt()
    assert cam.status() == ImageStatus.NOT_ACTIVE


def test_ring_stalls_when_not_drained_and_resumes(make_cam):
    cam = make_cam(speed=math.inf)
    cam.setup(SMALL, (1, 1), 10, 0, None, True, 3)
    cam.start()
    assert wait_for(lambda: cam.stalled)
    assert cam.frames_waiting == 3
    assert cam.status() == ImageStatus.FRAME_AVAILABLE  # the camera waits, frames wait too
    time.sleep(0.1)
    assert cam.frames_waiting == 3 and cam.stalled  # no progress, nothing overwritten
    numbers = [cam.poll_frame(1.0).frame_number]
    assert wait_for(lambda: cam.frames_waiting == 3 and cam.stalled)
    numbers += [f.frame_number for f in drain(cam, 3)]
    assert numbers == [1, 2, 3, 4]  # no frame lost across the stall
    assert cam.frames_dropped == 0
    assert cam.stall_count >= 2
    cam.halt()


def test_continuous_mode_until_halt(make_cam):
    cam = make_cam(speed=10.0)
    cam.setup(SMALL, (1, 1), 20, ExposureMode.EXT_TRIG_INTERNAL, None, True, 8)
    cam.start()
    frames = drain(cam, 20, timeout=10)
    assert [f.frame_number for f in frames] == list(range(1, 21))
    assert cam.status() in (
        ImageStatus.ACQUISITION_IN_PROGRESS,  # between frames, the ring drained
        ImageStatus.READOUT_IN_PROGRESS,
        ImageStatus.FRAME_AVAILABLE,  # the next frame already landed
    )
    assert cam.acquiring
    assert wait_for(lambda: cam.frames_waiting >= 1)
    cam.halt()
    assert cam.status() == ImageStatus.NOT_ACTIVE and not cam.acquiring
    waiting = cam.frames_waiting
    left = drain(cam, waiting, timeout=2)
    assert len(left) == waiting >= 1  # halt keeps what was already read out
    assert left[0].frame_number == 21
    assert cam.poll_frame(0.05) is None


def test_abort_discards_and_stops(make_cam):
    cam = make_cam(speed=math.inf)
    cam.setup(SMALL, (1, 1), 10, 0, None, True, 4)
    cam.start()
    assert wait_for(lambda: cam.stalled)
    cam.abort()
    assert cam.status() == ImageStatus.NOT_ACTIVE
    assert not cam.stalled and cam.frames_waiting == 0
    assert cam.poll_frame(0.05) is None
    cam.start()  # a new start after abort works
    assert drain(cam, 1)[0].frame_number == 1
    cam.abort()


def test_failed_readout(make_cam):
    cam = make_cam(speed=math.inf)
    cam.setup(SMALL, (1, 1), 10, 0, 3, False, 4)
    cam.fail_next_readout()
    cam.start()
    with pytest.raises(InstrumentFault, match="readout of frame 1 failed") as info:
        drain(cam, 1)
    assert info.value.code == ImageStatus.READOUT_FAILED
    assert cam.status() == ImageStatus.READOUT_FAILED
    assert cam.frames_dropped == 1
    cam.halt()
    assert cam.status() == ImageStatus.NOT_ACTIVE
    cam.start()
    assert [f.frame_number for f in drain(cam, 3)] == [1, 2, 3]


def test_software_trigger_modes(make_cam):
    cam = make_cam(speed=math.inf)
    cam.setup(SMALL, (1, 1), 10, ExposureMode.SOFTWARE_EDGE, 2, False, 4)
    cam.start()
    assert cam.poll_frame(0.1) is None  # waits for its trigger
    assert cam.status() == ImageStatus.EXPOSURE_IN_PROGRESS
    cam.sw_trigger()
    assert cam.poll_frame(2.0).frame_number == 1
    assert cam.poll_frame(0.1) is None
    cam.sw_trigger()
    assert cam.poll_frame(2.0).frame_number == 2
    cam.halt()
    cam.setup(SMALL, (1, 1), 10, ExposureMode.SOFTWARE_FIRST, 3, False, 4)
    cam.start()
    assert cam.poll_frame(0.1) is None
    cam.sw_trigger()
    assert [f.frame_number for f in drain(cam, 3)] == [1, 2, 3]  # then free-running
    cam.setup(SMALL, (1, 1), 10, ExposureMode.TIMED, 3, False, 4)
    cam.start()
    with pytest.raises(InstrumentError, match="runs free"):
        cam.sw_trigger()
    cam.abort()


def test_poll_before_start_is_an_error(make_cam):
    cam = make_cam()
    cam.setup(SMALL, (1, 1), 10, 0, 1, False, 4)
    with pytest.raises(InstrumentError, match="before start"):
        cam.poll_frame(0.01)


def test_new_setup_discards_frames_of_the_previous_acquisition(make_cam):
    cam = make_cam(speed=math.inf)
    cam.setup(SMALL, (1, 1), 10, 0, 3, False, 4)
    cam.start()
    assert wait_for(lambda: cam.status() == ImageStatus.READOUT_COMPLETE)
    cam.halt()
    assert cam.frames_waiting == 3
    cam.setup(Roi(0, 31, 0, 31), (1, 1), 10, 0, 1, False, 4)
    assert cam.frames_waiting == 0
    cam.start()
    assert drain(cam, 1)[0].data.shape == (32, 32)


def test_close_stops_the_producer(make_cam):
    cam = make_cam(speed=math.inf)
    cam.setup(SMALL, (1, 1), 10, 0, None, True, 2)
    cam.start()
    thread = cam._thread
    cam.close()
    thread.join(2)
    assert not thread.is_alive()
    assert not cam.is_open


# --- real backend without the SDK --------------------------------------------------------------

PYVCAM_PRESENT = importlib.util.find_spec("pyvcam") is not None


@pytest.mark.skipif(PYVCAM_PRESENT, reason="pyvcam is installed here")
def test_pyvcam_backend_says_clearly_that_the_sdk_is_missing():
    with pytest.raises(InstrumentError) as info:
        PyVcamBackend(label="camera")
    assert (
        "pyvcam / PVCAM SDK not installed: use the simulated backend or install the "
        "Photometrics SDK and pyvcam" in str(info.value)
    )
    assert info.value.instrument == "camera"
    with pytest.raises(InstrumentError, match="not installed"):
        load_backend("pvcam")


def test_load_backend_refuses_sim_and_unknown_kinds():
    with pytest.raises(ConfigError, match="runtime"):
        load_backend("sim")
    with pytest.raises(ConfigError, match="unknown camera backend 'andor'"):
        load_backend("andor")
