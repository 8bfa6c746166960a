"""The PVCAM camera (ophyd-async) against the simulated backend and against PyVcamBackend on the
fake pyvcam, under a real RunEngine, into real HDF5 files and the catalog; its documents are
the ones runs have always recorded (stated in pvcam_recorded_documents.json).

The camera lives on the RunEngine's loop (the ``RE`` fixture starts it); the tests reach it from
their own thread with :func:`daqbridge.devices.core.call_sync`, as the lab's front ends do. The
simulated sensor is small (64 x 48) and fast (speed factor); the long exposures run at real speed
only where the wait is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky.protocols import (
    Configurable,
    Readable,
    Stageable,
    Stoppable,
    Triggerable,
    WritesStreamAssets,
)
from bluesky.utils import FailedStatus
from ophyd.sim import SynAxis

from daqbridge.devices._hdf5 import FRAME_NUMBER_DATASET, FRAMES_DATASET, FrameFileError
from daqbridge.devices.core import call_sync
from daqbridge.devices.pvcam import PvcamCamera
from daqbridge.devices.pvcam_backend import ExposureMode, PyVcamBackend
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    ValueRejected,
)
from daqbridge.sim.pvcam import SimulatedCameraBackend
from tests.devices.fake_pyvcam_support import names
from tests.devices.small_disk import MIB, small_disk

SENSOR = (64, 48)  # (width, height): frames are (48, 64)


class TruthBackend(SimulatedCameraBackend):
    """The simulator, keeping every frame it handed out and counting setups: the truth a file is
    compared with, and the proof that a refused value never reached the camera."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.setups = 0
        self.delivered: list[np.ndarray] = []

    def setup(self, *args: Any, **kwargs: Any) -> Any:
        self.setups += 1
        return super().setup(*args, **kwargs)

    def poll_frame(self, timeout: float) -> Any:
        frame = super().poll_frame(timeout)
        if frame is not None:
            self.delivered.append(frame.data.copy())
        return frame


def on_loop(work: Any, timeout: float = 15.0) -> Any:
    """Run on the RunEngine's event loop (the camera lives there), bounded."""
    return call_sync(work, timeout=timeout)


def started(begin: Callable[[], Any]) -> Any:
    """``begin()`` on the loop, its status returned without waiting for it."""
    return on_loop(lambda: (begin(),))[0]


def path_of(resource: dict) -> str:
    return resource["uri"][len("file://localhost") :]


def frames_in(path: str) -> np.ndarray:
    with h5py.File(path, "r", swmr=True) as f:
        return f[FRAMES_DATASET][:]


def configuration(cam: PvcamCamera) -> dict[str, Any]:
    return {k: v["value"] for k, v in on_loop(cam.read_configuration()).items()}


@pytest.fixture
def make_cam(RE, tmp_path) -> Iterator[Callable[..., PvcamCamera]]:  # noqa: N803 - loop runs
    """Build cameras, connected on the RunEngine's loop; every one is closed after the test."""
    made: list[PvcamCamera] = []

    def make(*, backend=None, speed=50.0, frames_dir=None, connect=True, **kw) -> PvcamCamera:
        backend = backend or TruthBackend(sensor_size=SENSOR, speed=speed)
        kw.setdefault("exposure_ms", 5)
        kw.setdefault("camera", "PrimeBSI")
        cam = PvcamCamera("cam", backend, frames_dir=frames_dir or tmp_path / "frames", **kw)
        made.append(cam)
        if connect:
            on_loop(cam.connect(timeout=10))
        return cam

    yield make
    for cam in made:
        with contextlib.suppress(FrameFileError):
            cam.close()


# --- connection -------------------------------------------------------------------------------


def test_is_a_bluesky_detector(make_cam):
    cam = make_cam()
    for protocol in (Readable, Triggerable, Stageable, Configurable, Stoppable):
        assert isinstance(cam, protocol)
    assert isinstance(cam, WritesStreamAssets)
    assert cam.hints == {"fields": ["cam_sum", "cam_max"]}


def test_connect_to_the_simulator_reads_the_camera_and_applies_the_profile(make_cam):
    cam = make_cam(exposure_ms=12.5, roi=(8, 39, 0, 15), binning=(2, 2))
    assert cam.connected and cam.backend.is_open
    assert configuration(cam) == {
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
    assert cam.frame_shape() == (8, 16)
    assert cam.backend.setups == 0  # connect sets nothing up: each point does
    on_loop(lambda: cam.exposure.set(7))
    on_loop(cam.connect(timeout=10, force_reconnect=True))  # keeps the current settings
    assert configuration(cam)["cam_exposure"] == 7.0


def test_connect_through_pyvcam_follows_the_sdk_and_counts_into_a_file(make_cam, pvc, RE, docs):  # noqa: N803
    backend = PyVcamBackend(label="cam")
    cam = make_cam(backend=backend, trigger_mode="EXT_TRIG_INTERNAL", frames_per_point=2)
    sdk = [n for n in names(pvc.calls) if not n.startswith("Camera.")]
    assert sdk[0] == "init_pvcam" and sdk.index("get_cam_total") < sdk.index("open_camera")
    assert ("Camera.select_camera", "PrimeBSI") in pvc.calls
    assert "start_seq" not in sdk  # connect reads the camera, it starts nothing
    assert configuration(cam)["cam_sensor_size"] == [64, 48]

    RE(bp.count([cam], num=3))
    docs.validate()
    seqs = [c for c in pvc.calls if c[0] == "start_seq"]
    assert seqs == [("start_seq", 0, 5, int(ExposureMode.EXT_TRIG_INTERNAL), 2)] * 3
    assert names(pvc.calls).count("finish_seq") == 3
    (resource,) = docs.of("stream_resource")
    with h5py.File(path_of(resource), "r") as f:  # unstaged: closed, opens without SWMR
        frames, numbers = f[FRAMES_DATASET][:], f[FRAME_NUMBER_DATASET][:]
    assert frames.shape == (6, 48, 64)
    assert list(numbers) == [1, 2] * 3  # the frame counter restarts with each point
    np.testing.assert_array_equal(
        frames, np.broadcast_to(100 + numbers[:, None, None], frames.shape)
    )
    assert [e["data"]["cam_sum"] for e in docs.events()] == [
        int(frames[i : i + 2].sum(dtype=np.int64)) for i in (0, 2, 4)
    ]
    cam.close()
    assert names(pvc.calls)[-1] == "uninit_pvcam" and not pvc.sdk.initialised


def test_wrong_camera_name_is_an_identity_error_and_releases_nothing(make_cam):
    cam = make_cam(camera="Prime95B", connect=False)
    with pytest.raises(IdentityMismatch, match=r"'Prime95B' is not present.*\['PrimeBSI'\]"):
        on_loop(cam.connect(timeout=10))
    assert not cam.connected and not cam.backend.is_open


def test_a_bad_profile_is_refused_at_connect_and_the_camera_released(make_cam):
    with pytest.raises(ValueRejected, match="outside the 64 x 48 sensor"):
        make_cam(roi=(0, 99, 0, 47))
    with pytest.raises(ConfigError, match=r"exposure_ms: .*greater than or equal to 0\.001"):
        make_cam(exposure_ms=0, connect=False)  # no camera needed: refused when built
    assert make_cam().connected  # the first one let the (exclusive) camera go


def test_read_only_frames_dir_is_refused_at_connect_naming_the_directory(make_cam, tmp_path):
    with small_disk(tmp_path / "ro", MIB, read_only=True) as disk:
        cam = make_cam(frames_dir=disk / "frames", connect=False)
        with pytest.raises(FrameFileError) as info:
            on_loop(cam.connect(timeout=10))
    directory = disk / "frames"
    message = str(info.value)
    assert info.value.os_errno == errno.EROFS and info.value.path == str(directory)
    assert f"the frames directory {directory} is not writable: Read-only file system" in message
    assert "pvcam.frames_dir" in info.value.fix
    assert "power" not in message and "cable" not in message
    assert not cam.backend.is_open  # refused before the camera (exclusive) was taken


# --- counting into files ----------------------------------------------------------------------


def test_count_three_points_frames_land_in_the_file_as_the_backend_gave_them(make_cam, RE, docs):  # noqa: N803
    cam = make_cam(frames_per_point=2)
    (uid,) = RE(bp.count([cam], num=3))
    docs.validate()
    (resource,) = docs.of("stream_resource")
    assert resource["run_start"] == uid and resource["data_key"] == "cam_image"
    assert resource["parameters"] == {
        "dataset": FRAMES_DATASET,
        "swmr": True,
        "chunk_shape": [1],
        "multiplier": 2,
    }
    data = docs.of("stream_datum")
    assert [d["indices"] for d in data] == [{"start": i, "stop": i + 1} for i in range(3)]
    assert [d["seq_nums"] for d in data] == [{"start": i, "stop": i + 1} for i in range(1, 4)]
    assert cam.file_path is None  # unstaged: the file is closed
    with h5py.File(path_of(resource), "r") as f:
        frames = f[FRAMES_DATASET][:]
    truth = np.stack(cam.backend.delivered)
    assert frames.shape == (6, 48, 64) and frames.dtype == np.uint16
    np.testing.assert_array_equal(frames, truth)
    events = docs.events()
    assert [e["data"]["cam_sum"] for e in events] == [
        int(truth[i : i + 2].sum(dtype=np.int64)) for i in (0, 2, 4)
    ]
    assert [e["data"]["cam_max"] for e in events] == [
        int(truth[i : i + 2].max()) for i in (0, 2, 4)
    ]


def _run_documents(cam: Any, RE: Any, plan: Any) -> dict[str, list[dict]]:  # noqa: N803
    docs: dict[str, list[dict]] = {}
    token = RE.subscribe(lambda name, doc: docs.setdefault(name, []).append(doc))
    try:
        RE(plan)
    finally:
        RE.unsubscribe(token)
    return docs


def _comparable_descriptor(doc: dict) -> dict:
    # object_classes: the RunEngine's record of the Python class of each object (bluesky 1.16
    # fills it, 1.15 left it empty), not something the driver records.
    skip = ("uid", "run_start", "time", "object_classes")
    out = {k: v for k, v in doc.items() if k not in skip}
    out["configuration"] = {
        obj: {k: v for k, v in conf.items() if k != "timestamps"}
        for obj, conf in doc["configuration"].items()
    }
    return out


RECORDED = json.loads((Path(__file__).parent / "pvcam_recorded_documents.json").read_text())
"""Documents the ophyd v1 camera recorded for the same settings and the same seeded simulator,
captured before it was removed: descriptor (without uid and times), StreamResource fields,
StreamDatum indices, event data."""


@pytest.mark.parametrize(
    "settings",
    [{}, {"frames_per_point": 3, "roi": (0, 31, 0, 23), "binning": 2}],
    ids=["one-frame", "three-binned-frames"],
)
def test_documents_are_the_recorded_ones(make_cam, RE, tmp_path, settings, request):  # noqa: N803
    """Descriptor, StreamResource and StreamDatum as runs have always recorded them, for the
    same settings: the catalog cannot tell which generation of the driver took the run."""
    recorded = RECORDED[request.node.callspec.id]
    cam = make_cam(
        frames_dir=tmp_path / "async",
        backend=SimulatedCameraBackend(sensor_size=SENSOR, speed=50.0),
        **settings,
    )
    new = _run_documents(cam, RE, bp.count([cam], num=3))

    (new_desc,) = new["descriptor"]
    expected = {k: v for k, v in recorded["descriptor"].items() if k != "object_classes"}
    assert _comparable_descriptor(new_desc) == expected
    assert list(new_desc["data_keys"]) == recorded["data_keys_order"]
    assert list(new_desc["configuration"]["cam"]["data_keys"]) == recorded["conf_order"]
    (new_res,) = new["stream_resource"]
    for key in ("data_key", "mimetype", "parameters"):
        assert new_res[key] == recorded["resource"][key], key
    assert sorted(new_res) == recorded["resource_keys"]
    assert path_of(new_res).startswith(str(tmp_path / "async" / "cam_"))
    pick = ("indices", "seq_nums")
    assert [{k: d[k] for k in pick} for d in new["stream_datum"]] == recorded["datum"]
    # the same camera truth (seeded simulator): the same statistics
    assert [e["data"] for e in new["event"]] == recorded["events"]


def test_each_run_gets_its_own_file_and_indices_restart(make_cam, RE, docs):  # noqa: N803
    cam = make_cam()
    RE(bp.count([cam], num=2))
    RE(bp.count([cam], num=1))
    paths = [path_of(r) for r in docs.of("stream_resource")]
    assert len(set(paths)) == 2
    assert [frames_in(p).shape[0] for p in paths] == [2, 1]
    assert docs.of("stream_datum")[2]["indices"] == {"start": 0, "stop": 1}


def test_the_loop_keeps_running_during_a_long_exposure(make_cam, RE):  # noqa: N803
    cam = make_cam(speed=1.0, exposure_ms=800)
    ticks: list[float] = []

    async def heartbeat() -> None:  # a ticker, not a synchronisation: it measures the loop
        while True:
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
    gaps = np.diff([t for t in ticks if t0 <= t <= t1])
    # an exposure on the loop would leave an 800 ms hole; generous bound for a busy machine
    assert len(gaps) >= 10 and gaps.max() < 0.4, gaps.max()


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "value", "pattern"),
    [
        ("exposure", 0, r"exposure \(ms\) 0 is outside the limits \[0.001, 3600000"),
        ("exposure", 1.0005, "not a whole number of microseconds"),
        ("roi", (0, 64, 0, 47), r"outside the 64 x 48 sensor.*columns 0\.\.63, rows 0\.\.47"),
        ("roi", (10, 5, 0, 47), "reversed"),
        ("binning", 3, r"binning 3 is not supported by camera PrimeBSI.*1x1, 2x2, 4x4"),
        ("trigger_mode", "WARP", r"trigger mode 'WARP' is not supported.*TIMED"),
        ("frames_per_point", 0, "frames per point 0 is outside"),
        ("exposure", -5, "outside the limits"),
        ("exposure", 4_000_000, "outside the limits"),
        ("exposure", math.nan, "must be finite"),
        ("exposure", "fast", "must be a number"),
        ("roi", (0, 1.5, 0, 47), "must be an integer"),
        ("roi", "full", "is not a region"),
        ("binning", (2, 1), "not supported"),
        ("frames_per_point", 1.5, "whole number"),
    ],
)
def test_a_setting_outside_the_connect_time_limits_is_refused_before_the_camera(
    make_cam,
    RE,
    signal,
    value,
    pattern,  # noqa: N803
):
    cam = make_cam()
    before = configuration(cam)
    with pytest.raises(ValueRejected, match=pattern) as info:
        on_loop(lambda: getattr(cam, signal).set(value))  # raises before a status exists
    assert "'cam'" in str(info.value)
    with pytest.raises(ValueRejected, match=pattern):
        RE(bps.mv(getattr(cam, signal), value))
    assert configuration(cam) == before
    assert cam.backend.setups == 0


def test_a_refused_setting_sends_nothing_to_pyvcam(make_cam, pvc):
    cam = make_cam(backend=PyVcamBackend(label="cam"))
    calls = len(pvc.calls)
    with pytest.raises(ValueRejected, match="outside the 64 x 48 sensor"):
        on_loop(lambda: cam.roi.set((0, 31, 0, 48)))
    with pytest.raises(ValueRejected, match="not a whole number of 4-pixel bins"):
        cam.configure({"binning": 4, "roi": (0, 29, 0, 47)})
    assert pvc.calls[calls:] == []  # not a parameter read, not a set_roi


def test_settings_checked_together_and_frozen_while_staged(make_cam):
    cam = make_cam()
    cam.configure({"binning": 2, "roi": (0, 31, 0, 15)})
    assert cam.frame_shape() == (8, 16)
    with pytest.raises(ValueRejected, match=r"\['gain'\] are not camera settings"):
        cam.configure({"gain": 2})
    with pytest.raises(ValueRejected, match="cannot be set"):
        on_loop(cam.temperature._connector.backend.put(10.0))  # a read-back, not a setting
    on_loop(lambda: cam.stage())
    try:
        with pytest.raises(ValueRejected, match="cannot change roi while staged"):
            on_loop(lambda: cam.roi.set((0, 15, 0, 15)))
        on_loop(lambda: cam.exposure.set(7))  # an exposure series changes it inside one run
        on_loop(lambda: cam.trigger())
        assert on_loop(cam.get_index()) == 1
    finally:
        on_loop(lambda: cam.unstage())


# --- stopping and failing ---------------------------------------------------------------------


def test_stop_during_an_exposure_aborts_it_and_writes_nothing(make_cam, wait_until):
    cam = make_cam(speed=1.0, exposure_ms=20_000)
    on_loop(lambda: cam.stage())
    try:
        path = cam.file_path
        status = started(cam.trigger)
        assert wait_until(lambda: cam.backend.acquiring, timeout=5)  # exposing now
        assert not status.done
        with pytest.raises(InstrumentError, match="previous point is still being acquired"):
            on_loop(lambda: cam.trigger())
        t0 = time.monotonic()
        on_loop(cam.stop())
        with pytest.raises(InstrumentError, match=r"'cam'.*stopped by stop\(\) after 0 of 1"):
            on_loop(status)
        assert time.monotonic() - t0 < 5  # not the 20 s exposure
        assert on_loop(cam.get_index()) == 0
        assert not cam.backend.acquiring
        on_loop(lambda: cam.exposure.set(2))
        on_loop(lambda: cam.trigger())  # the camera is usable again
        assert on_loop(cam.get_index()) == 1
    finally:
        on_loop(lambda: cam.unstage())
    assert frames_in(str(path)).shape[0] == 1


def test_stop_on_pyvcam_never_leaks_an_sdk_exception(make_cam, pvc, wait_until):
    cam = make_cam(backend=PyVcamBackend(label="cam"), trigger_mode="EDGE_RISING", timeout=30)
    on_loop(lambda: cam.stage())
    try:
        status = started(cam.trigger)  # waits for an edge that never comes
        assert wait_until(lambda: pvc.sdk.acquisition(0) is not None)
        pvc.sdk.fail_on["finish_seq"] = ValueError("Failed to finish sequence")
        on_loop(cam.stop())
        with pytest.raises(InstrumentError, match="stopped by stop"):
            on_loop(status)
    finally:
        on_loop(lambda: cam.unstage())
    cam.close()
    assert names(pvc.calls)[-1] == "uninit_pvcam" and not pvc.sdk.initialised


def test_a_failed_readout_fails_the_point_and_the_stop_document_names_it(make_cam, RE, docs):  # noqa: N803
    cam = make_cam()
    cam.backend.fail_next_readout()
    with pytest.raises(FailedStatus):
        RE(bp.count([cam], num=3))
    (stop,) = docs.of("stop")
    assert stop["exit_status"] == "fail"
    assert "[instrument 'cam' on pvcam-sim://PrimeBSI]" in stop["reason"]
    assert "readout of frame 1 of 1 failed (READOUT_FAILED)" in stop["reason"]
    assert docs.events() == []
    on_loop(lambda: cam.stage())
    try:
        cam.backend.fail_next_readout()
        with pytest.raises(InstrumentFault) as info:
            on_loop(lambda: cam.trigger())
        assert info.value.code == 4 and "PrimeBSI" in str(info.value)
        assert on_loop(cam.get_index()) == 0  # nothing written for the failed point
        on_loop(lambda: cam.trigger())  # the next point works
        assert on_loop(cam.get_index()) == 1
    finally:
        on_loop(lambda: cam.unstage())


def test_misuse_before_connect_or_stage(make_cam):
    cam = make_cam(connect=False)
    with pytest.raises(InstrumentError, match="not connected"):
        on_loop(lambda: cam.stage())
    on_loop(cam.connect(timeout=10))
    with pytest.raises(InstrumentError, match=r"trigger\(\) before stage\(\)"):
        on_loop(lambda: cam.trigger())

    async def no_docs() -> list:
        return [doc async for doc in cam.collect_asset_docs()]

    assert on_loop(no_docs()) == []
    cam.close()
    cam.close()  # twice is fine
    assert not cam.connected


# --- the frame file on a full disk (a real tmpfs) ---------------------------------------------

BIG_SENSOR = (256, 256)  # 128 KiB frames: a 1 MiB disk holds a handful of points
BIG_FRAME_BYTES = 256 * 256 * 2
PAGE = os.sysconf("SC_PAGE_SIZE")


def chain_of(exc: BaseException | None) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def test_disk_full_stops_the_run_at_the_first_failed_point_and_close_reports_it(
    make_cam,
    RE,
    docs,
    tmp_path,  # noqa: N803
):
    points = 4 * MIB // BIG_FRAME_BYTES
    with small_disk(tmp_path / "disk", MIB) as disk:
        cam = make_cam(backend=TruthBackend(sensor_size=BIG_SENSOR, speed=50.0), frames_dir=disk)
        try:
            with pytest.raises(FailedStatus) as info:
                RE(bp.count([cam], num=points))
            (path,) = disk.glob("cam_*.h5")
            with h5py.File(path, "r") as f:  # unstaged: closed, opens without SWMR
                sums = [int(frame.sum(dtype=np.int64)) for frame in f[FRAMES_DATASET][:]]
            with pytest.raises(FrameFileError) as closing:
                cam.close()
            cam.close()  # reported once
        finally:
            with contextlib.suppress(FrameFileError):
                cam.close()
    errors = [e for e in chain_of(info.value) if isinstance(e, FrameFileError)]
    assert errors, f"no FrameFileError in {chain_of(info.value)!r}"
    error = errors[0]
    events = docs.events()
    assert 0 < len(events) < points
    assert sums == [e["data"]["cam_sum"] for e in events]  # every point before it, intact
    assert (error.path, error.os_errno) == (str(path), errno.ENOSPC)
    assert f"writing frame {len(events) + 1} to the frame file failed: No space" in str(error)
    assert error.free_bytes is not None and error.free_bytes < BIG_FRAME_BYTES + PAGE
    assert "power" not in str(error) and "cable" not in str(error)
    (stop,) = docs.of("stop")
    assert stop["exit_status"] == "fail" and "No space left on device" in stop["reason"]
    assert f"the frame file {path} of this session is incomplete" in str(closing.value)


# --- documents, files and the catalog ---------------------------------------------------------


NO_CAMERA = type(
    "NoCameraBackend",
    (SimulatedCameraBackend,),
    {"camera_names": lambda self: [], "__doc__": "A PVCAM system with no camera attached."},
)


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


def test_count_documents_file_and_catalog_agree(make_cam, RE, docs, catalog):  # noqa: N803
    cam = make_cam(frames_dir=catalog.frames_dir / "cam")
    token = RE.subscribe(catalog.writer)
    try:
        (uid,) = RE(bp.count([cam], num=5))
    finally:
        RE.unsubscribe(token)
    docs.validate()
    (descriptor,) = docs.of("descriptor")
    key = descriptor["data_keys"]["cam_image"]
    assert key["external"] == "STREAM:"
    assert key["shape"] == [48, 64] and key["dtype"] == "array" and key["dtype_numpy"] == "<u2"
    assert descriptor["hints"]["cam"]["fields"] == ["cam_sum", "cam_max"]
    (resource,) = docs.of("stream_resource")
    assert resource["uri"].startswith("file://localhost/")
    assert path_of(resource).startswith(str(catalog.frames_dir))
    data = docs.of("stream_datum")
    assert {d["stream_resource"] for d in data} == {resource["uid"]}
    assert {d["descriptor"] for d in data} == {descriptor["uid"]}
    assert [e["seq_num"] for e in docs.events()] == [1, 2, 3, 4, 5]
    with h5py.File(path_of(resource), "r") as f:
        frames = f[FRAMES_DATASET][:]
        assert list(f[FRAME_NUMBER_DATASET][:]) == [1] * 5  # one frame per sequence
    catalog.flush()
    dataset = catalog.client[uid].primary.read()
    images = dataset["cam_image"].values
    assert images.shape == (5, 48, 64)
    np.testing.assert_array_equal(images, frames)
    assert list(dataset["cam_max"].values) == [int(f.max()) for f in frames]


def test_scan_with_motor_binned_roi_reads_back(make_cam, RE, docs, catalog):  # noqa: N803
    cam = make_cam(frames_dir=catalog.frames_dir / "cam", roi=(0, 31, 0, 23), binning=2)
    motor = SynAxis(name="motor")
    token = RE.subscribe(catalog.writer)
    try:
        (uid,) = RE(bp.scan([cam], motor, -1, 1, 3))
    finally:
        RE.unsubscribe(token)
    docs.validate()
    assert len(docs.of("stream_datum")) == 3
    (descriptor,) = docs.of("descriptor")
    assert descriptor["data_keys"]["cam_image"]["shape"] == [12, 16]
    catalog.flush()
    dataset = catalog.client[uid].primary.read()
    assert dataset["cam_image"].shape == (3, 12, 16)
    assert list(dataset["motor"].values) == [-1.0, 0.0, 1.0]
    # binning sums pixels: a binned frame holds about 4x the counts per pixel of an unbinned one
    assert dataset["cam_image"].values.mean() > 3 * 100


def test_frames_per_point_read_back_as_stack(make_cam, RE, docs, catalog):  # noqa: N803
    cam = make_cam(frames_dir=catalog.frames_dir / "cam", frames_per_point=3)
    token = RE.subscribe(catalog.writer)
    try:
        (uid,) = RE(bp.count([cam], num=2))
    finally:
        RE.unsubscribe(token)
    (descriptor,) = docs.of("descriptor")
    assert descriptor["data_keys"]["cam_image"]["shape"] == [3, 48, 64]
    (resource,) = docs.of("stream_resource")
    frames = frames_in(path_of(resource))
    assert frames.shape == (6, 48, 64)
    catalog.flush()
    images = catalog.client[uid].primary.read()["cam_image"].values
    assert images.shape == (2, 3, 48, 64)
    np.testing.assert_array_equal(images.reshape(6, 48, 64), frames)


# --- triggers, exposures, cameras found -------------------------------------------------------


def test_missing_external_trigger_times_out_clearly(make_cam):
    cam = make_cam(trigger_mode="EDGE_RISING", timeout=0.3)
    on_loop(lambda: cam.stage())
    try:
        with pytest.raises(InstrumentError, match=r"'cam'.*no frame 1 of 1 within.*EDGE_RISING"):
            on_loop(lambda: cam.trigger())
    finally:
        on_loop(lambda: cam.unstage())


def test_software_trigger_modes_are_triggered_by_the_device(make_cam, RE, docs):  # noqa: N803
    cam = make_cam(trigger_mode=ExposureMode.SOFTWARE_EDGE, frames_per_point=2, timeout=2)
    RE(bp.count([cam], num=2))
    RE(bps.mv(cam.trigger_mode, "software_first"))
    RE(bp.count([cam], num=1))
    paths = [path_of(r) for r in docs.of("stream_resource")]
    assert [frames_in(p).shape[0] for p in paths] == [4, 2]


def test_sub_millisecond_exposure_runs_in_microseconds(make_cam, RE):  # noqa: N803
    cam = make_cam(exposure_ms=0.25)
    RE(bp.count([cam], num=1))
    assert cam.backend.exposure_resolution == "us"
    assert cam.backend.frame_period_s() == pytest.approx(0.25e-3 + cam.backend.readout_time_s())


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"roi": (0, 30, 0, 47), "binning": 2}, "not a whole number of 2-pixel bins"),
        ({"trigger_mode": "WARP"}, r"trigger mode 'WARP' is not supported.*TIMED"),
        ({"gain": 2}, r"\['gain'\] are not camera settings"),
    ],
)
def test_configure_refuses_with_the_limits_and_changes_nothing(make_cam, settings, pattern):
    cam = make_cam()
    before = configuration(cam)
    with pytest.raises(ValueRejected, match=pattern) as info:
        cam.configure(settings)
    assert "'cam'" in str(info.value)
    assert configuration(cam) == before
    assert cam.backend.setups == 0


def test_no_camera_present_is_a_clear_error(make_cam):
    cam = make_cam(backend=NO_CAMERA(sensor_size=SENSOR), connect=False)
    with pytest.raises(InstrumentError, match="no PVCAM camera is present.*power and cable"):
        on_loop(cam.connect(timeout=10))


def test_the_camera_is_exclusive(make_cam):
    first = make_cam()
    assert first.connected
    second = make_cam(connect=False)
    with pytest.raises(InstrumentError, match="already open by another backend"):
        on_loop(second.connect(timeout=10))
