"""FrameWriter: structure first, then SWMR; batches flushed; a SIGKILL keeps every flushed frame;
a full disk or a read-only directory is a clear error and leaves a cleanly closed file."""

from __future__ import annotations

import errno
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
    FrameFileError,
    FrameWriter,
)
from daqbridge.errors import InstrumentError
from tests.devices.small_disk import MIB, small_disk


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


# --- a full disk, a read-only directory (a real tmpfs; skipped where it cannot be mounted) -------

BIG = (256, 256)  # 128 KiB frames: a 1 MiB disk holds a handful
BIG_BYTES = BIG[0] * BIG[1] * 2
PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs allocates pages: a frame may need one more


def test_disk_full_fails_the_first_write_naming_the_file_and_free_space(tmp_path):
    # No flush inside the loop: the write itself must fail, not a later flush or a destructor.
    with small_disk(tmp_path / "disk", MIB) as disk:
        writer = FrameWriter(
            disk / "run.h5", BIG, flush_every=1000, flush_interval=3600, instrument="cam1"
        )
        try:
            with pytest.raises(FrameFileError) as info:
                for i in range(4 * MIB // BIG_BYTES):
                    writer.append(frame(i, BIG), frame_number=i)
            kept = writer.frames_written
        finally:
            writer.close()
    err = info.value
    assert err.os_errno == errno.ENOSPC
    assert err.free_bytes is not None and err.free_bytes < BIG_BYTES + PAGE
    message = str(err)
    assert f"'cam1' on {disk / 'run.h5'}]" in message
    assert f"writing frame {kept + 1} to the frame file failed: No space left on device" in message
    assert f"free of 1.0 MiB on {disk}" in message
    assert "pvcam.frames_dir" in err.fix


FILLING_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from daqbridge.devices._hdf5 import FrameWriter
    from daqbridge.errors import InstrumentError

    writer = FrameWriter(sys.argv[1], (256, 256), flush_every=1000, flush_interval=3600)
    for i in range(int(sys.argv[2])):
        try:
            writer.append(np.full((256, 256), i, dtype=np.uint16), frame_number=i)
        except InstrumentError:
            break
    print(writer.frames_written, flush=True)
    writer.close()
    """
)


def test_after_a_failed_write_close_releases_the_file_and_the_process_exits_cleanly(tmp_path):
    # In a child process, because what went wrong was libhdf5 crashing at interpreter exit on
    # handles left open with data it could not write (a segfault is a return code here).
    with small_disk(tmp_path / "disk", MIB) as disk:
        path = disk / "run.h5"
        child = subprocess.run(
            [sys.executable, "-c", FILLING_WRITER, str(path), str(4 * MIB // BIG_BYTES)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (child.returncode, "Exception ignored" in child.stderr) == (0, False), child.stderr
        kept = int(child.stdout)
        with h5py.File(path, "r") as f:  # plain open: closed cleanly, no SWMR flag left
            data = f[FRAMES_DATASET][:]
            numbers = f[FRAME_NUMBER_DATASET][:]
    assert 0 < kept < 4 * MIB // BIG_BYTES
    assert data.shape[0] == kept
    assert [int(data[i].min()) for i in range(kept)] == list(range(kept))
    assert [int(data[i].max()) for i in range(kept)] == list(range(kept))
    assert list(numbers) == list(range(kept))


def test_a_batch_that_does_not_fit_leaves_none_of_its_frames(tmp_path):
    # A camera point is a batch: point i must stay rows 3i..3i+2 in the file.
    with small_disk(tmp_path / "disk", MIB) as disk:
        path = disk / "run.h5"
        writer = FrameWriter(path, BIG, flush_every=1, flush_interval=3600)
        points = 0
        with pytest.raises(FrameFileError):
            for p in range(4 * MIB // (3 * BIG_BYTES)):
                writer.append_many([(frame(p, BIG), None, 3 * p + k) for k in range(3)])
                points += 1
        with pytest.raises(FrameFileError, match="takes no more frames after a failed write"):
            writer.append(frame(0, BIG))
        writer.close()
        with h5py.File(path, "r") as f:
            numbers = f[FRAME_NUMBER_DATASET][:]
            rows = f[FRAMES_DATASET].shape[0]
    assert rows == len(numbers) == 3 * points
    assert list(numbers) == list(range(3 * points))


@pytest.mark.parametrize("subdir", ["", "frames"], ids=["existing-dir", "missing-dir"])
def test_read_only_directory_says_not_writable_not_the_instrument(tmp_path, subdir):
    with small_disk(tmp_path / "ro", MIB, read_only=True) as disk:
        directory = disk / subdir if subdir else disk
        with pytest.raises(FrameFileError) as info:
            FrameWriter(directory / "run.h5", (6, 8), instrument="cam1")
    err = info.value
    message = str(err)
    assert err.os_errno == errno.EROFS
    assert f"the frames directory {directory} is not writable: Read-only file system" in message
    assert "The camera is not at fault" in message
    assert "pvcam.frames_dir" in err.fix and str(directory) in err.fix
    assert "power" not in message and "cable" not in message


def test_a_full_disk_at_creation_says_so_and_leaves_no_file(tmp_path):
    with small_disk(tmp_path / "disk", MIB) as disk:
        with open(disk / "filler", "wb", buffering=0) as filler:
            with pytest.raises(OSError) as full:
                while True:
                    filler.write(bytes(PAGE))
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(FrameFileError) as info:
            FrameWriter(disk / "run.h5", (6, 8), instrument="cam1")
        left = sorted(p.name for p in disk.iterdir())
    message = str(info.value)
    assert f"the frames directory {disk} has no room: No space left on device" in message
    assert f"0 bytes free of 1.0 MiB on {disk}" in message
    assert "power" not in message and "cable" not in message
    assert left == ["filler"]  # no half-made frame file
