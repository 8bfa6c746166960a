"""PvcamCamera against the simulated PVCAM backend, under a real RunEngine, into a real catalog.

The simulated sensor is small (64 x 48) and fast (speed factor) so the whole module runs in
seconds; the long-exposure tests run at real speed only where the wait is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import time
import warnings

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.protocols import (
    Configurable,
    Readable,
    Stageable,
    Stoppable,
    Triggerable,
    WritesStreamAssets,
)
from bluesky.utils import FailedStatus
from event_model import DocumentNames, schema_validators
from ophyd.sim import SynAxis

from daqbridge.devices._hdf5 import FRAME_NUMBER_DATASET, FRAMES_DATASET, FrameFileError
from daqbridge.devices.pvcam import PvcamCamera
from daqbridge.devices.pvcam_backend import ExposureMode
from daqbridge.errors import IdentityMismatch, InstrumentError, InstrumentFault, ValueRejected
from daqbridge.sim.pvcam import SimulatedCameraBackend
from tests.devices.conftest import stop_run_engine
from tests.devices.small_disk import MIB, small_disk

SENSOR = (64, 48)  # (width, height): frames are (48, 64)


class CountingBackend(SimulatedCameraBackend):
    """The simulator, counting setups: proves a rejected value never reached the camera."""

    setups = 0

    def setup(self, *args, **kwargs):
        self.setups += 1
        return super().setup(*args, **kwargs)


class NoCameraBackend(SimulatedCameraBackend):
    """A PVCAM system with no camera attached (the SDK enumerates none)."""

    def camera_names(self) -> list[str]:
        return []


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from daqbridge.catalog import open_catalog

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mp.delenv("DAQBRIDGE_DATA", raising=False)
        cat = open_catalog(tmp_path_factory.mktemp("data"))
        try:
            yield cat
        finally:
            cat.close()


@pytest.fixture
def make_cam(tmp_path):
    """Build connected cameras; every one is closed (camera released) after the test."""
    made: list[PvcamCamera] = []

    def make(
        *, backend=None, speed=50.0, frames_dir=None, name="cam", connect=True, **kw
    ) -> PvcamCamera:
        backend = backend or CountingBackend(sensor_size=SENSOR, speed=speed)
        kw.setdefault("exposure_ms", 5)
        kw.setdefault("camera", "PrimeBSI")
        cam = PvcamCamera(name, backend, frames_dir=frames_dir or tmp_path / "frames", **kw)
        made.append(cam)
        if connect:
            cam.connect()
        return cam

    yield make
    for cam in made:
        cam.close()


@pytest.fixture
def RE():
    engine = RunEngine({})
    engine.docs = []
    engine.subscribe(lambda name, doc: engine.docs.append((name, doc)))
    yield engine
    stop_run_engine(engine)


def validate(docs) -> None:
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)


def of(docs, name):
    return [doc for n, doc in docs if n == name]


def frames_in(path) -> np.ndarray:
    with h5py.File(path, "r", swmr=True) as f:
        return f[FRAMES_DATASET][:]


# --- documents, files and the catalog ---------------------------------------------------------


def test_is_a_bluesky_detector(make_cam):
    cam = make_cam()
    for protocol in (Readable, Triggerable, Stageable, Configurable, Stoppable):
        assert isinstance(cam, protocol)
    assert isinstance(cam, WritesStreamAssets)
    assert cam.hints == {"fields": ["cam_sum", "cam_max"]}


def test_count_documents_validate_file_and_catalog_agree(make_cam, RE, catalog):
    cam = make_cam(frames_dir=catalog.frames_dir / "cam")
    RE.subscribe(catalog.writer)
    (uid,) = RE(bp.count([cam], num=5))
    docs = RE.docs
    validate(docs)

    (descriptor,) = of(docs, "descriptor")
    key = descriptor["data_keys"]["cam_image"]
    assert key["external"] == "STREAM:"
    assert key["shape"] == [48, 64] and key["dtype"] == "array" and key["dtype_numpy"] == "<u2"
    assert descriptor["hints"]["cam"]["fields"] == ["cam_sum", "cam_max"]
    assert descriptor["configuration"]["cam"]["data"]["cam_chip_name"] == "GS2020BSI"
    assert descriptor["configuration"]["cam"]["data_keys"]["cam_exposure"]["units"] == "ms"

    (resource,) = of(docs, "stream_resource")
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["data_key"] == "cam_image"
    assert resource["parameters"]["dataset"] == FRAMES_DATASET
    assert resource["run_start"] == uid
    assert resource["uri"].startswith("file://localhost/")
    path = resource["uri"][len("file://localhost") :]
    assert path.startswith(str(catalog.frames_dir))

    data = of(docs, "stream_datum")
    assert len(data) == 5
    assert [d["indices"] for d in data] == [{"start": i, "stop": i + 1} for i in range(5)]
    assert [d["seq_nums"] for d in data] == [{"start": i, "stop": i + 1} for i in range(1, 6)]
    assert {d["stream_resource"] for d in data} == {resource["uid"]}
    assert {d["descriptor"] for d in data} == {descriptor["uid"]}
    assert [e["seq_num"] for e in of(docs, "event")] == [1, 2, 3, 4, 5]

    # unstaged: the file is closed, so a plain (non-SWMR) open works
    assert cam.file_path is None
    with h5py.File(path, "r") as f:
        frames = f[FRAMES_DATASET][:]
        assert list(f[FRAME_NUMBER_DATASET][:]) == [1] * 5  # one frame per sequence
    assert frames.shape == (5, 48, 64) and frames.dtype == np.uint16
    sums = [e["data"]["cam_sum"] for e in of(docs, "event")]
    assert sums == [int(f.sum(dtype=np.int64)) for f in frames]

    catalog.flush()
    dataset = catalog.client[uid].primary.read()
    images = dataset["cam_image"].values
    assert images.shape == (5, 48, 64)
    np.testing.assert_array_equal(images, frames)
    assert list(dataset["cam_max"].values) == [int(f.max()) for f in frames]


def test_scan_with_motor_binned_roi_reads_back(make_cam, RE, catalog):
    cam = make_cam(frames_dir=catalog.frames_dir / "cam", roi=(0, 31, 0, 23), binning=2)
    motor = SynAxis(name="motor")
    RE.subscribe(catalog.writer)
    (uid,) = RE(bp.scan([cam], motor, -1, 1, 3))
    validate(RE.docs)
    assert len(of(RE.docs, "stream_datum")) == 3
    (descriptor,) = of(RE.docs, "descriptor")
    assert descriptor["data_keys"]["cam_image"]["shape"] == [12, 16]
    catalog.flush()
    dataset = catalog.client[uid].primary.read()
    assert dataset["cam_image"].shape == (3, 12, 16)
    assert list(dataset["motor"].values) == [-1.0, 0.0, 1.0]
    # binning sums pixels: a binned frame holds about 4x the counts per pixel of an unbinned one
    assert dataset["cam_image"].values.mean() > 3 * 100


def test_frames_per_point_read_back_as_stack(make_cam, RE, catalog):
    cam = make_cam(frames_dir=catalog.frames_dir / "cam", frames_per_point=3)
    RE.subscribe(catalog.writer)
    (uid,) = RE(bp.count([cam], num=2))
    validate(RE.docs)
    (descriptor,) = of(RE.docs, "descriptor")
    assert descriptor["data_keys"]["cam_image"]["shape"] == [3, 48, 64]
    (resource,) = of(RE.docs, "stream_resource")
    assert resource["parameters"]["multiplier"] == 3
    data = of(RE.docs, "stream_datum")
    assert [d["indices"] for d in data] == [{"start": 0, "stop": 1}, {"start": 1, "stop": 2}]
    frames = frames_in(resource["uri"][len("file://localhost") :])
    assert frames.shape == (6, 48, 64)
    catalog.flush()
    images = catalog.client[uid].primary.read()["cam_image"].values
    assert images.shape == (2, 3, 48, 64)
    np.testing.assert_array_equal(images.reshape(6, 48, 64), frames)


def test_each_run_gets_its_own_file(make_cam, RE):
    cam = make_cam()
    RE(bp.count([cam], num=2))
    RE(bp.count([cam], num=3))
    resources = of(RE.docs, "stream_resource")
    assert len(resources) == 2
    paths = [r["uri"][len("file://localhost") :] for r in resources]
    assert paths[0] != paths[1]
    assert [frames_in(p).shape[0] for p in paths] == [2, 3]
    # the second run's indices start again at 0 in its own file
    assert of(RE.docs, "stream_datum")[2]["indices"] == {"start": 0, "stop": 1}


# --- never blocking, stopping, failing --------------------------------------------------------


def test_trigger_returns_at_once_and_the_loop_keeps_running(make_cam, RE):
    cam = make_cam(speed=1.0, exposure_ms=800)
    ticks: list[float] = []

    async def heartbeat():
        while len(ticks) < 2000:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    beat = asyncio.run_coroutine_threadsafe(heartbeat(), RE.loop)
    try:
        t0 = time.monotonic()
        RE(bp.count([cam], num=1))
        t1 = time.monotonic()
    finally:
        beat.cancel()
    assert t1 - t0 >= 0.75  # the exposure really took its time
    during = [t for t in ticks if t0 <= t <= t1]
    gaps = np.diff(during)
    # a trigger blocking the loop would leave an 800 ms hole; generous bound for a busy machine
    assert len(during) >= 10 and gaps.max() < 0.6, gaps.max()

    cam.stage()
    try:
        status = cam.trigger()
        assert not status.done  # returned before the exposure ended
        status.wait(10)
        assert status.success and cam.get_index() == 1
    finally:
        cam.unstage()


def test_stop_aborts_a_long_exposure_and_writes_nothing(make_cam):
    cam = make_cam(speed=1.0, exposure_ms=20_000)
    cam.stage()
    try:
        path = cam.file_path
        status = cam.trigger()
        time.sleep(0.2)
        t0 = time.monotonic()
        cam.stop()
        with pytest.raises(InstrumentError, match=r"cam.*stopped by stop\(\)"):
            status.wait(5)
        assert time.monotonic() - t0 < 5
        assert cam.get_index() == 0
        assert not cam.backend.acquiring
        cam.exposure.set(2)
        status = cam.trigger()  # the camera is usable again
        status.wait(10)
        assert cam.get_index() == 1
    finally:
        cam.unstage()
    assert frames_in(path).shape[0] == 1


def test_readout_failed_fails_the_status_naming_the_camera(make_cam, RE):
    cam = make_cam()
    cam.stage()
    try:
        cam.backend.fail_next_readout()
        status = cam.trigger()
        with pytest.raises(InstrumentFault) as info:
            status.wait(10)
        message = str(info.value)
        assert "'cam'" in message and "PrimeBSI" in message and "READOUT_FAILED" in message
        assert info.value.code == 4
        assert cam.get_index() == 0  # nothing written for the failed point
        status = cam.trigger()
        status.wait(10)
        assert cam.get_index() == 1
    finally:
        cam.unstage()

    cam.backend.fail_next_readout()
    with pytest.raises(Exception) as info:
        RE(bp.count([cam], num=3))
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, InstrumentFault) and "PrimeBSI" in str(e) for e in chain)
    (stop,) = of(RE.docs, "stop")
    assert stop["exit_status"] == "fail"


def test_missing_external_trigger_times_out_clearly(make_cam):
    cam = make_cam(trigger_mode="EDGE_RISING", timeout=0.3)
    cam.stage()
    try:
        status = cam.trigger()
        with pytest.raises(InstrumentError, match=r"'cam'.*no frame 1 of 1 within.*EDGE_RISING"):
            status.wait(10)
    finally:
        cam.unstage()


def test_software_trigger_modes_are_triggered_by_the_device(make_cam, RE):
    cam = make_cam(trigger_mode=ExposureMode.SOFTWARE_EDGE, frames_per_point=2, timeout=2)
    RE(bp.count([cam], num=2))
    cam.trigger_mode.set("software_first")
    RE(bp.count([cam], num=1))
    paths = [r["uri"][len("file://localhost") :] for r in of(RE.docs, "stream_resource")]
    assert [frames_in(p).shape[0] for p in paths] == [4, 2]


# --- settings and their validation ------------------------------------------------------------


def test_configuration_reports_the_camera(make_cam):
    cam = make_cam(exposure_ms=12.5, roi=(8, 39, 0, 15), binning=(2, 2))
    config = {k: v["value"] for k, v in cam.read_configuration().items()}
    assert config == {
        "cam_exposure": 12.5,
        "cam_roi": [8, 39, 0, 15],
        "cam_binning": [2, 2],
        "cam_trigger_mode": "TIMED",
        "cam_frames_per_point": 1,
        "cam_camera_name": "PrimeBSI",
        "cam_chip_name": "GS2020BSI",
        "cam_sensor_size": [64, 48],
        "cam_bit_depth": 16,
        "cam_temperature": -20.0,
    }
    described = cam.describe_configuration()
    assert described["cam_temperature"]["units"] == "degC"
    assert described["cam_exposure"]["units"] == "ms"
    assert cam.frame_shape() == (8, 16)
    cam.exposure.set(7)
    cam.connect()  # a reconnect re-checks the current settings, it does not reset them
    assert cam.exposure.get() == 7.0 and cam.roi.get() == [8, 39, 0, 15]


def test_sub_millisecond_exposure_runs_in_microseconds(make_cam, RE):
    cam = make_cam(exposure_ms=0.25)
    RE(bp.count([cam], num=1))
    assert cam.backend.exposure_resolution == "us"
    assert cam.backend.frame_period_s() == pytest.approx(0.25e-3 + cam.backend.readout_time_s())


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (0, r"exposure \(ms\) 0 is outside the limits \[0.001, 3600000"),
        (-5, "outside the limits"),
        (4_000_000, "outside the limits"),
        (math.nan, "must be finite"),
        ("fast", "must be a number"),
        (1.0005, "not a whole number of microseconds"),
    ],
)
def test_bad_exposure_is_rejected_before_the_camera(make_cam, value, pattern):
    cam = make_cam()
    with pytest.raises(ValueRejected, match=pattern) as info:
        cam.exposure.set(value)
    assert "'cam'" in str(info.value)
    assert cam.exposure.get() == 5.0
    assert cam.backend.setups == 0


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"roi": (0, 64, 0, 47)}, r"outside the 64 x 48 sensor.*columns 0\.\.63, rows 0\.\.47"),
        ({"roi": (10, 5, 0, 47)}, "reversed"),
        ({"roi": (0, 1.5, 0, 47)}, "must be an integer"),
        ({"roi": "full"}, "is not a region"),
        ({"binning": 3}, r"binning 3 is not supported by camera PrimeBSI.*1x1, 2x2, 4x4"),
        ({"binning": (2, 1)}, "not supported"),
        ({"roi": (0, 30, 0, 47), "binning": 2}, "not a whole number of 2-pixel bins"),
        ({"trigger_mode": "WARP"}, r"trigger mode 'WARP' is not supported.*TIMED"),
        ({"frames_per_point": 0}, "frames per point 0 is outside"),
        ({"frames_per_point": 1.5}, "whole number"),
        ({"gain": 2}, r"\['gain'\] are not camera settings"),
    ],
)
def test_bad_region_binning_mode_rejected_with_limits(make_cam, settings, pattern):
    cam = make_cam()
    before = cam.read_configuration()
    with pytest.raises(ValueRejected, match=pattern) as info:
        cam.configure(settings)
    assert "'cam'" in str(info.value)
    after = cam.read_configuration()
    assert {k: v["value"] for k, v in after.items()} == {k: v["value"] for k, v in before.items()}
    assert cam.backend.setups == 0


def test_settings_checked_together_and_in_plans(make_cam, RE):
    cam = make_cam()
    with pytest.raises(ValueRejected):
        cam.binning.set(4)  # 64 x 48 is a multiple of 4: fine; but ...
        cam.roi.set((0, 29, 0, 47))  # ... 30 columns are not whole 4-pixel bins
    cam.configure({"binning": 2, "roi": (0, 31, 0, 15)})
    assert cam.frame_shape() == (8, 16)
    with pytest.raises(ValueRejected, match="exposure"):
        RE(bps.mv(cam.exposure, -1))
    with pytest.raises(ValueRejected, match="read from the camera"):
        cam.temperature.set(10)
    with pytest.raises(ValueRejected, match="read from the camera"):
        cam.chip_name.put("other")


def test_shape_settings_are_frozen_while_staged_exposure_is_not(make_cam):
    cam = make_cam()
    cam.stage()
    try:
        with pytest.raises(ValueRejected, match="cannot change roi while staged"):
            cam.roi.set((0, 31, 0, 23))
        with pytest.raises(ValueRejected, match="frames_per_point while staged"):
            cam.frames_per_point.set(2)
        cam.roi.set((0, 63, 0, 47))  # the same region is not a change
        cam.exposure.set(7)  # an exposure series changes exposure inside one run
        cam.trigger().wait(10)
    finally:
        cam.unstage()
    cam.roi.set((0, 31, 0, 23))
    assert cam.frame_shape() == (24, 32)


# --- connection and misuse --------------------------------------------------------------------


def test_wrong_camera_name_is_an_identity_error(make_cam):
    cam = make_cam(camera="Prime95B", connect=False)
    with pytest.raises(IdentityMismatch, match=r"'Prime95B' is not present.*\['PrimeBSI'\]"):
        cam.connect()
    assert not cam.connected


def test_no_camera_present_is_a_clear_error(make_cam):
    cam = make_cam(backend=NoCameraBackend(sensor_size=SENSOR), connect=False)
    with pytest.raises(InstrumentError, match="no PVCAM camera is present.*power and cable"):
        cam.connect()


def test_camera_is_exclusive_and_released_after_a_bad_profile(make_cam):
    with pytest.raises(ValueRejected, match="outside the 64 x 48 sensor"):
        make_cam(roi=(0, 99, 0, 47))  # connect applies the profile and refuses it
    first = make_cam(name="cam1")  # ... and released the camera, so this one can open it
    assert first.connected
    with pytest.raises(InstrumentError, match="already open by another backend"):
        make_cam(name="cam2")


def test_misuse_before_connect_or_stage(make_cam):
    cam = make_cam(connect=False)
    with pytest.raises(InstrumentError, match="not connected.*connect"):
        cam.stage()
    cam.connect()
    with pytest.raises(InstrumentError, match=r"trigger\(\) before stage\(\)"):
        cam.trigger()
    assert list(cam.collect_asset_docs()) == []
    cam.close()
    cam.close()  # twice is fine
    assert not cam.connected


# --- the frame file: a full disk, a read-only directory (a real tmpfs) --------------------------

BIG_SENSOR = (256, 256)  # 128 KiB frames: a 1 MiB disk holds a handful of points
BIG_FRAME_BYTES = 256 * 256 * 2
PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs allocates pages: a frame may need one more


def chain_of(exc: BaseException | None) -> list[BaseException]:
    found = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def test_the_stop_document_names_the_failed_point(make_cam, RE):
    cam = make_cam()
    cam.backend.fail_next_readout()
    with pytest.raises(FailedStatus):
        RE(bp.count([cam], num=3))
    (stop,) = of(RE.docs, "stop")
    assert stop["exit_status"] == "fail"
    assert "[instrument 'cam' on pvcam-sim://PrimeBSI]" in stop["reason"]
    assert "readout of frame 1 of 1 failed (READOUT_FAILED)" in stop["reason"]


def test_read_only_frames_dir_is_refused_at_connect_not_blamed_on_the_camera(make_cam, tmp_path):
    with small_disk(tmp_path / "ro", MIB, read_only=True) as disk:
        cam = make_cam(frames_dir=disk / "frames", connect=False)
        with pytest.raises(FrameFileError) as info:
            cam.connect()
    message = str(info.value)
    assert info.value.os_errno == errno.EROFS
    assert f"'cam' on {disk / 'frames'}]" in message
    directory = disk / "frames"
    assert f"the frames directory {directory} is not writable: Read-only file system" in message
    assert "pvcam.frames_dir" in info.value.fix
    assert "power" not in message and "cable" not in message
    assert not cam.backend.is_open  # refused before the camera (exclusive) was taken


def test_disk_full_stops_the_run_at_the_first_failed_point(tmp_path, RE):
    points = 4 * MIB // BIG_FRAME_BYTES
    with small_disk(tmp_path / "disk", MIB) as disk:
        backend = SimulatedCameraBackend(sensor_size=BIG_SENSOR, speed=50.0)
        cam = PvcamCamera("cam", backend, frames_dir=disk, exposure_ms=5, camera="PrimeBSI")
        try:
            cam.connect()
            with pytest.raises(FailedStatus) as info:
                RE(bp.count([cam], num=points))
            (path,) = disk.glob("cam_*.h5")
            with h5py.File(path, "r") as f:  # unstaged: closed, opens without swmr
                sums = [int(frame.sum(dtype=np.int64)) for frame in f[FRAMES_DATASET][:]]
        finally:
            with contextlib.suppress(FrameFileError):
                cam.close()  # it reports the incomplete file: the next test's subject
    errors = [e for e in chain_of(info.value) if isinstance(e, FrameFileError)]
    assert errors, f"no FrameFileError in {chain_of(info.value)!r}"
    error = errors[0]
    events = of(RE.docs, "event")
    assert 0 < len(events) < points
    assert sums == [e["data"]["cam_sum"] for e in events]  # every point before it, intact
    assert (error.path, error.os_errno) == (str(path), errno.ENOSPC)
    assert f"writing frame {len(events) + 1} to the frame file failed: No space" in str(error)
    assert error.free_bytes is not None and error.free_bytes < BIG_FRAME_BYTES + PAGE
    assert f"free of 1.0 MiB on {disk}" in str(error)


def test_close_reports_a_frame_file_left_incomplete_once(tmp_path, RE):
    with small_disk(tmp_path / "disk", MIB) as disk:
        backend = SimulatedCameraBackend(sensor_size=BIG_SENSOR, speed=50.0)
        cam = PvcamCamera("cam", backend, frames_dir=disk, exposure_ms=5, camera="PrimeBSI")
        try:
            cam.connect()
            with contextlib.suppress(Exception):
                RE(bp.count([cam], num=4 * MIB // BIG_FRAME_BYTES))
            (path,) = disk.glob("cam_*.h5")
            with pytest.raises(FrameFileError) as info:
                cam.close()
            cam.close()  # reported once: a second close is quiet
        finally:
            with contextlib.suppress(FrameFileError):
                cam.close()
    message = str(info.value)
    assert f"the frame file {path} of this session is incomplete: writing frame" in message
    assert "No space left on device" in message
