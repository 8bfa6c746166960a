"""Disk full while the camera writes: the run stops at the first failed write, nothing crashes.

A child process (tests/stress/disk_full_child.py) starts a simulated lab whose camera writes
512 x 512 frames, two per point, to a small real filesystem (a tmpfs the test mounts; skipped,
with the reason, where it cannot be mounted), runs an exposure series with more frames than the
disk holds, and shuts down. Checked, from the outside:

* the process exits by itself with code 0 (a segfault in libhdf5 at exit is a negative code) and
  no HDF5 write error went to stderr as "Exception ignored in ... __dealloc__";
* the run stopped at the first failed write: its error and its stop document name the file, the
  OS error and the free space; the file holds exactly the points the run emitted;
* the shutdown report is not clean and says which file was left incomplete;
* the frames written before the failure read back with plain h5py, equal to the events' sums.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from daqbridge.devices._hdf5 import FRAMES_DATASET
from tests.devices.small_disk import MIB, small_disk
from tests.stress import disk_full_child as plan

CHILD = Path(__file__).with_name("disk_full_child.py")
ROOT = Path(__file__).resolve().parents[2]
SIDE = 512
FRAME_BYTES = SIDE * SIDE * 2
DISK_BYTES = 3 * MIB  # holds a few of the series' points, never all of them

PROFILE = """
[lab]
name = "disk full"

[simulation]
enabled = true
speed = 20.0

[[instruments]]
id = "sim_camera"
driver = "pvcam"
stack = "native"
camera = "PrimeBSI"

[instruments.pvcam]
backend = "sim"
exposure_ms = 1.0
frames_dir = "{frames}"
roi = {{ s1 = 0, s2 = {last}, p1 = 0, p2 = {last} }}
binning = [1, 1]
"""


@pytest.mark.ci_short
def test_disk_full_while_the_camera_writes(tmp_path, stress_data):
    points = len(plan.EXPOSURES_MS) * plan.POINTS_PER_EXPOSURE
    per_point = plan.FRAMES_PER_POINT
    assert points * per_point * FRAME_BYTES > DISK_BYTES  # the series cannot fit
    data = stress_data("disk-full")
    with small_disk(tmp_path / "frames", DISK_BYTES) as disk:
        profile = tmp_path / "lab.toml"
        profile.write_text(PROFILE.format(frames=disk, last=SIDE - 1))
        child = subprocess.run(
            [sys.executable, str(CHILD), str(profile), str(data)],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
        )
        stderr_tail = child.stderr[-3000:]
        assert child.returncode == 0, f"child exited with {child.returncode}:\n{stderr_tail}"
        assert "Exception ignored" not in child.stderr, stderr_tail
        files = sorted(disk.glob("sim_camera_*.h5"))
        stored: list[int] = []
        for path in files:
            with h5py.File(path, "r") as f:  # plain open: the file was closed cleanly
                frames = f[FRAMES_DATASET][:]
            sums = [int(frame.sum(dtype=np.int64)) for frame in frames]
            assert len(sums) % per_point == 0, f"a partial point in {path}"
            stored += [sum(sums[i : i + per_point]) for i in range(0, len(sums), per_point)]

    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    kinds = {line["kind"]: line for line in lines}
    events = [line for line in lines if line["kind"] == "event"]
    assert "completed" not in kinds and "error" in kinds, lines
    error, stop, shutdown = kinds["error"], kinds["stop"], kinds["shutdown"]
    (path,) = files

    # Stopped at the first failed write, which is named with the file and the free space.
    assert (error["type"], error["path"], error["os_errno"]) == (
        "FrameFileError",
        str(path),
        errno.ENOSPC,
    )
    assert 0 < len(events) < points
    failed_frame = [per_point * len(events) + k for k in range(1, per_point + 1)]
    assert any(
        f"writing frame {k} to the frame file failed: No space left on device" in error["message"]
        for k in failed_frame
    ), error["message"]
    assert error["free_bytes"] < FRAME_BYTES + os.sysconf("SC_PAGE_SIZE")  # tmpfs: whole pages
    assert f"free of 3.0 MiB on {disk}" in error["message"]
    assert stop["exit_status"] == "fail"
    assert error["message"] in stop["reason"]  # the first failure, not a status repr

    # The shutdown says it was not clean, and why.
    assert shutdown["clean"] is False
    native = next(p for p in shutdown["phases"] if p["phase"] == "native")
    assert native["outcome"] == "failed"
    assert f"the frame file {path} of this session is incomplete" in native["detail"]
    others = {p["phase"]: p["outcome"] for p in shutdown["phases"] if p["phase"] != "native"}
    assert set(others.values()) <= {"ok", "skipped"}, others

    # Every point before the failure is in the file, intact.
    assert stored == [event["sum"] for event in events]
