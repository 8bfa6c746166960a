"""Camera frames: HDF5 files in frames_dir, announced by StreamResource/StreamDatum documents."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from event_model import compose_run

from daqbridge.catalog import WriteAheadLog, open_catalog

SHAPE = (4, 5)


def _write_frames(path: Path, count: int) -> np.ndarray:
    """An HDF5 file written the crash-safe way: structure first, then SWMR, a flush per frame."""
    frames = (np.arange(count * SHAPE[0] * SHAPE[1]) % 4096).astype("uint16")
    frames = frames.reshape(count, *SHAPE)
    with h5py.File(path, "w", libver="latest") as f:
        dataset = f.create_dataset(
            "/entry/data/data",
            shape=(0, *SHAPE),
            maxshape=(None, *SHAPE),
            chunks=(1, *SHAPE),
            dtype="uint16",
        )
        f.swmr_mode = True
        for i, frame in enumerate(frames):
            dataset.resize(i + 1, axis=0)
            dataset[i] = frame
            dataset.flush()
    return frames


def _camera_run(frames_file: Path, count: int) -> list[tuple[str, dict]]:
    """The documents a camera exposure series emits: one frame and one motor reading per point."""
    bundle = compose_run(metadata={"plan_name": "exposure_series", "detectors": ["cam"]})
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    descriptor = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "cam_image": {
                "source": "sim:cam",
                "dtype": "array",
                "shape": list(SHAPE),
                "dtype_numpy": "<u2",
                "external": "STREAM:",
            },
            "x": {"source": "sim:x", "dtype": "number", "shape": []},
        },
    )
    docs.append(("descriptor", descriptor.descriptor_doc))
    resource = bundle.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=frames_file.as_uri(),
        data_key="cam_image",
        parameters={"dataset": "/entry/data/data", "chunk_shape": [1, *SHAPE]},
    )
    docs.append(("stream_resource", resource.stream_resource_doc))
    for i in range(count):
        datum = resource.compose_stream_datum(
            indices={"start": i, "stop": i + 1},
            seq_nums={"start": i + 1, "stop": i + 2},
            descriptor=descriptor.descriptor_doc,
        )
        docs.append(("stream_datum", dict(datum)))
        event = descriptor.compose_event(
            data={"x": float(i)}, timestamps={"x": time.time()}, seq_num=i + 1
        )
        docs.append(("event", event))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def test_frames_in_frames_dir_read_back_as_an_array(shared_catalog):
    path = shared_catalog.frames_dir / "live_cam.h5"
    frames = _write_frames(path, 3)
    docs = _camera_run(path, 3)
    for name, doc in docs:
        shared_catalog.writer(name, doc)
    shared_catalog.flush(timeout=60)

    dataset = shared_catalog.client[docs[0][1]["uid"]].primary.read()
    np.testing.assert_array_equal(dataset["cam_image"].values, frames)
    np.testing.assert_array_equal(dataset["x"].values, [0.0, 1.0, 2.0])


def test_crashed_camera_run_is_recovered_with_its_frames(data_dir):
    path = data_dir / "frames" / "crashed_cam.h5"
    frames = _write_frames(path, 4)
    docs = _camera_run(path, 4)[:-1]  # the process died before the stop document
    log = WriteAheadLog(data_dir / "wal")
    for name, doc in docs:
        log.append(name, doc)
    log.close()

    with open_catalog(data_dir) as catalog:
        (result,) = catalog.recovered
        assert result.action == "replayed" and result.events == 4
        run = catalog.client[docs[0][1]["uid"]]
        assert run.metadata["stop"]["exit_status"] == "fail"
        np.testing.assert_array_equal(run.primary.read()["cam_image"].values, frames)


KILLED_CAMERA = """
import os, signal, sys
import h5py, numpy as np
with h5py.File(sys.argv[1], "w", libver="latest") as f:
    dataset = f.create_dataset(
        "/entry/data/data", shape=(0, 4, 5), maxshape=(None, 4, 5), chunks=(1, 4, 5),
        dtype="uint16",
    )
    f.swmr_mode = True
    for i in range(3):
        dataset.resize(i + 1, axis=0)
        dataset[i] = np.full((4, 5), i + 1, dtype="uint16")
        dataset.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the camera's process dies with the file open
"""


def _killed_camera_file(path: Path, child_env: dict[str, str]) -> np.ndarray:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CAMERA, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return np.stack([np.full(SHAPE, i + 1, dtype="uint16") for i in range(3)])


def test_camera_file_of_a_killed_run_opens_plainly_after_recovery(data_dir, child_env):
    path = data_dir / "frames" / "killed_cam.h5"
    frames = _killed_camera_file(path, child_env)
    with pytest.raises(OSError, match="already open for write"):  # what a crash leaves
        h5py.File(path, "r").close()
    docs = _camera_run(path, 3)[:-1]
    log = WriteAheadLog(data_dir / "wal")
    for name, doc in docs:
        log.append(name, doc)
    log.close()

    with open_catalog(data_dir) as catalog:
        (result,) = catalog.recovered
        assert result.action == "replayed"
        assert "killed_cam.h5: HDF5 open-for-write mark cleared" in result.note
        run = catalog.client[docs[0][1]["uid"]]
        np.testing.assert_array_equal(run.primary.read()["cam_image"].values, frames)
    with h5py.File(path, "r") as f:  # plain, no swmr=True, as any HDF5 program opens it
        np.testing.assert_array_equal(f["/entry/data/data"][:], frames)


def test_write_mark_of_a_file_not_understood_is_left_alone(tmp_path, child_env):
    from daqbridge.catalog._swmr import clear_write_mark

    path = tmp_path / "odd.h5"
    _killed_camera_file(path, child_env)
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF  # a superblock byte: the stored checksum no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum does not match"):
        clear_write_mark(path)
    assert path.read_bytes() == bytes(raw)
