"""FrameWriter: structure first, then SWMR; batches flushed; a SIGKILL keeps every flushed frame."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import h5py
import numpy as np
import pytest

from daqbridge.devices._hdf5 import (
    FRAME_NUMBER_DATASET,
    FRAMES_DATASET,
    TIMESTAMP_DATASET,
    FrameWriter,
)
from daqbridge.errors import InstrumentError


def frame(value: int, shape=(6, 8)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint16)


def test_structure_is_created_before_swmr(tmp_path):
    path = tmp_path / "run.h5"
    with FrameWriter(path, (6, 8), instrument="cam", attrs={"camera": "PrimeBSI"}) as writer:
        assert writer._file.swmr_mode is True
        data = writer._file[FRAMES_DATASET]
        assert data.shape == (0, 6, 8)
        assert data.maxshape == (None, 6, 8)
        assert data.chunks == (1, 6, 8)
        assert data.dtype == np.uint16
    with h5py.File(path, "r") as f:
        assert f["entry"].attrs["camera"] == "PrimeBSI"
        assert f[TIMESTAMP_DATASET].dtype == np.float64
        assert f[FRAME_NUMBER_DATASET].dtype == np.int64


def test_frames_timestamps_and_numbers_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    with FrameWriter(path, (6, 8)) as writer:
        for i in range(4):
            assert writer.append(frame(i), timestamp=100.0 + i, frame_number=10 + i) == i + 1
    with h5py.File(path, "r") as f:
        assert f[FRAMES_DATASET].shape == (4, 6, 8)
        assert [int(f[FRAMES_DATASET][i, 3, 5]) for i in range(4)] == [0, 1, 2, 3]
        assert list(f[TIMESTAMP_DATASET][:]) == [100.0, 101.0, 102.0, 103.0]
        assert list(f[FRAME_NUMBER_DATASET][:]) == [10, 11, 12, 13]


def test_flushes_per_batch_and_on_demand(tmp_path):
    writer = FrameWriter(tmp_path / "run.h5", (6, 8), flush_every=3, flush_interval=3600)
    try:
        writer.append(frame(0))
        writer.append(frame(1))
        assert (writer.frames_written, writer.frames_flushed) == (2, 0)
        writer.append(frame(2))
        assert writer.frames_flushed == 3
        writer.append(frame(3))
        assert writer.frames_flushed == 3
        assert writer.flush() == 4
    finally:
        writer.close()
    assert writer.frames_flushed == 4


def test_flush_interval_zero_flushes_every_frame(tmp_path):
    with FrameWriter(tmp_path / "run.h5", (6, 8), flush_every=100, flush_interval=0) as writer:
        writer.append(frame(0))
        assert writer.frames_flushed == 1


def test_bad_frames_and_closed_writer_give_clear_errors(tmp_path):
    writer = FrameWriter(tmp_path / "run.h5", (6, 8), instrument="cam1")
    with pytest.raises(InstrumentError, match=r"cam1.*shape \(5, 8\).*\(6, 8\)"):
        writer.append(frame(0, shape=(5, 8)))
    with pytest.raises(InstrumentError, match="float64 cannot be stored as uint16"):
        writer.append(np.zeros((6, 8)))
    writer.append(frame(1).astype(np.uint8))  # a lower bit depth fits
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(InstrumentError, match="already closed.*stage the camera again"):
        writer.append(frame(0))
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f[FRAMES_DATASET].shape == (1, 6, 8)


def test_existing_file_is_never_reused(tmp_path):
    path = tmp_path / "run.h5"
    FrameWriter(path, (6, 8)).close()
    with pytest.raises(InstrumentError, match="already exists.*one writer"):
        FrameWriter(path, (6, 8), instrument="cam1")


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(InstrumentError, match="cannot create the frame file.*writable directory"):
        FrameWriter(blocker / "run.h5", (6, 8), instrument="cam1")


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "run.h5"
    writer = FrameWriter(path, (6, 8), flush_every=4)
    per_thread = 15

    def worker(value: int) -> None:
        for _ in range(per_thread):
            writer.append(frame(value), frame_number=value)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    writer.close()
    with h5py.File(path, "r") as f:
        data = f[FRAMES_DATASET][:]
        numbers = f[FRAME_NUMBER_DATASET][:]
    assert data.shape[0] == 3 * per_thread
    # every frame is whole (one value throughout) and matches its own frame_number row
    assert all((data[i] == data[i, 0, 0]).all() for i in range(len(data)))
    assert list(data[:, 0, 0]) == list(numbers)
    assert Counter(numbers.tolist()) == {1: per_thread, 2: per_thread, 3: per_thread}


CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from daqbridge.devices._hdf5 import FrameWriter

    writer = FrameWriter(sys.argv[1], (32, 48), flush_every=3, flush_interval=3600)
    for i in range(100_000):
        writer.append(np.full((32, 48), i % 65536, dtype=np.uint16), frame_number=i)
        if writer.frames_flushed == i + 1:
            print(writer.frames_flushed, flush=True)
        time.sleep(0.002)
    """
)


def test_sigkill_mid_run_keeps_every_flushed_frame(tmp_path):
    path = tmp_path / "crash.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    flushed = 0
    try:
        deadline = time.monotonic() + 60
        while flushed < 12 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            flushed = int(line)
        assert flushed >= 12, f"writer never flushed 12 frames: {proc.stderr.read()}"
        # a reader in another process sees the flushed frames while the writer still runs
        with h5py.File(path, "r", swmr=True) as f:
            assert f[FRAMES_DATASET].shape[0] >= flushed
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    with h5py.File(path, "r", swmr=True) as f:
        data = f[FRAMES_DATASET]
        numbers = f[FRAME_NUMBER_DATASET]
        assert data.shape[0] >= flushed
        assert numbers.shape[0] >= flushed
        assert flushed % 3 == 0  # flushed in batches of three
        for i in range(flushed):
            assert (data[i] == i).all(), f"frame {i} damaged"
            assert numbers[i] == i
