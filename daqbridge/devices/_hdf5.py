"""One HDF5 file of camera frames, written so that a crash never costs more than the last batch.

Why it is built this way:

* Every dataset is created BEFORE the file switches to SWMR (single writer, multiple readers).
  HDF5 cannot add objects to a file in SWMR mode, and a writer killed outside SWMR can leave a
  truncated file that no reader opens (STACK_NOTES, "HDF5 frames"). Inside SWMR, each flush
  leaves the file consistent on disk, so ``kill -9`` loses at most the frames appended since the
  last flush.
* Frames are flushed per batch (``flush_every`` frames or ``flush_interval`` seconds, whichever
  comes first) because a flush per 8 MB frame is cheap next to the exposure, while a flush per tiny
  frame at hundreds of frames per second is not. ``flush()`` forces one, e.g. at the end of a point,
  so every frame announced in a StreamDatum document is readable by then.
* One writer per file: the file is created with mode ``"x"`` (never reopened or overwritten) and
  every h5py call goes through one lock, so the device's worker thread appending frames and the
  RunEngine thread closing the file at unstage cannot interleave.

Layout (NeXus-like, what Tiled and areaDetector readers expect):

* ``/entry/data/data``: (N, h, w) frames, chunked one frame per chunk, resizable along N.
* ``/entry/data/timestamp``: (N,) float64, POSIX seconds at which each frame was read out.
* ``/entry/data/frame_number``: (N,) int64, the camera's own frame counter, so a dropped frame
  shows up as a gap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from daqbridge.errors import InstrumentError

#: Path of the frame dataset inside every file; StreamResource documents point here.
FRAMES_DATASET = "/entry/data/data"
TIMESTAMP_DATASET = "/entry/data/timestamp"
FRAME_NUMBER_DATASET = "/entry/data/frame_number"


class FrameWriter:
    """Appends frames of one shape to one new HDF5 file, from one thread at a time.

    ``instrument`` only names the camera in error messages.
    """

    def __init__(
        self,
        path: str | Path,
        frame_shape: tuple[int, int],
        *,
        dtype: str | np.dtype = "uint16",
        flush_every: int = 10,
        flush_interval: float = 0.5,
        instrument: str | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.instrument = instrument
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.dtype = np.dtype(dtype)
        if flush_every < 1 or flush_interval < 0:
            raise ValueError(
                f"flush_every must be >= 1 and flush_interval >= 0, got {flush_every}, "
                f"{flush_interval}."
            )
        if min(self.frame_shape) < 1:
            raise ValueError(f"frame_shape must be positive, got {frame_shape}.")
        self.flush_every = int(flush_every)
        self.flush_interval = float(flush_interval)
        self._lock = threading.Lock()
        self._written = 0
        self._flushed = 0
        self._last_flush = time.monotonic()
        self._file = self._create(attrs or {})

    # --- creation ---------------------------------------------------------------------------

    def _create(self, attrs: Mapping[str, Any]) -> h5py.File:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(
                f"cannot create the frame file's directory: {exc}.",
                fix="check that the frames directory is a writable directory with free space.",
            ) from exc
        try:
            # libver="latest" is required for SWMR; mode "x" refuses an existing file, so two
            # writers (or two runs) can never share one.
            f = h5py.File(self.path, "x", libver="latest")
        except FileExistsError as exc:
            raise self._error(
                "the frame file already exists; one file belongs to one writer and one run.",
                fix="use a new file name (the device adds a run-unique token) or move the old "
                "file.",
            ) from exc
        except OSError as exc:
            raise self._error(
                f"cannot create the frame file: {exc}.",
                fix="check that the frames directory exists, is writable and has free space.",
            ) from exc
        try:
            h, w = self.frame_shape
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            frames = data.create_dataset(
                "data",
                shape=(0, h, w),
                maxshape=(None, h, w),
                chunks=(1, h, w),
                dtype=self.dtype,
            )
            frames.attrs["interpretation"] = "image"
            data.create_dataset(
                "timestamp", shape=(0,), maxshape=(None,), chunks=(256,), dtype="f8"
            )
            data.create_dataset(
                "frame_number", shape=(0,), maxshape=(None,), chunks=(256,), dtype="i8"
            )
            for key, value in attrs.items():
                entry.attrs[key] = value
            # Everything exists now; from here on the file only grows, and stays readable.
            f.swmr_mode = True
        except BaseException:
            f.close()
            self.path.unlink(missing_ok=True)
            raise
        return f

    # --- writing ------------------------------------------------------------------------------

    @property
    def frames_written(self) -> int:
        """Frames appended so far (some may still wait for the next flush)."""
        return self._written

    @property
    def frames_flushed(self) -> int:
        """Frames a reader (or a crash) is guaranteed to find in the file."""
        return self._flushed

    @property
    def closed(self) -> bool:
        return self._file is None

    def append(
        self, frame: np.ndarray, *, timestamp: float | None = None, frame_number: int = -1
    ) -> int:
        """Append one frame, flushing when the batch is full or old enough; returns the count."""
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise self._error(
                f"frame of shape {frame.shape} does not fit the file's frames of shape "
                f"{self.frame_shape}.",
                fix="the region or binning changed during a run; unstage and stage again.",
            )
        if frame.dtype != self.dtype:
            if not np.can_cast(frame.dtype, self.dtype, casting="same_kind"):
                raise self._error(
                    f"frame of dtype {frame.dtype} cannot be stored as {self.dtype}.",
                    fix="use a bit depth that matches the file (16-bit frames are uint16).",
                )
            frame = frame.astype(self.dtype)
        stamp = time.time() if timestamp is None else float(timestamp)
        with self._lock:
            f = self._open_file()
            data = f[FRAMES_DATASET]
            n = self._written
            data.resize(n + 1, axis=0)
            data[n] = frame
            for name, value in ((TIMESTAMP_DATASET, stamp), (FRAME_NUMBER_DATASET, frame_number)):
                ds = f[name]
                ds.resize(n + 1, axis=0)
                ds[n] = value
            self._written = n + 1
            if (
                self._written - self._flushed >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_interval
            ):
                self._flush_locked()
            return self._written

    def flush(self) -> int:
        """Make every appended frame durable and visible to SWMR readers. Returns frames flushed."""
        with self._lock:
            if self._file is not None and self._flushed < self._written:
                self._flush_locked()
            return self._flushed

    def _flush_locked(self) -> None:
        f = self._file
        for name in (FRAMES_DATASET, TIMESTAMP_DATASET, FRAME_NUMBER_DATASET):
            f[name].flush()
        f.flush()
        self._flushed = self._written
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close; safe to call twice (unstage after a failed stage, shutdown)."""
        with self._lock:
            f, self._file = self._file, None
            if f is None:
                return
            try:
                if f.id.valid:
                    for name in (FRAMES_DATASET, TIMESTAMP_DATASET, FRAME_NUMBER_DATASET):
                        f[name].flush()
                    self._flushed = self._written
            finally:
                f.close()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<FrameWriter {self.path} {state}, {self._written} frames {self.frame_shape}>"

    # --- helpers ----------------------------------------------------------------------------

    def _open_file(self) -> h5py.File:
        if self._file is None:
            raise self._error(
                "frame file is already closed; no more frames can be appended.",
                fix="stage the camera again to open a new file.",
            )
        return self._file

    def _error(self, what: str, fix: str) -> InstrumentError:
        return InstrumentError(what, instrument=self.instrument, resource=str(self.path), fix=fix)
