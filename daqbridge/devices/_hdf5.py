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
* A write that fails (disk full, a disk gone read-only) must fail where it happens, once, with
  the file and the free space in the message, and leave nothing behind that libhdf5 would try to
  write again. So the raw-data chunk cache is off (``rdcc_nbytes=0``): every frame goes to the
  operating system inside ``append``, and ENOSPC is raised there. With the cache on, frames sat
  in it until a dataset handle was freed; the write failed inside h5py's ``__dealloc__`` (printed
  as "Exception ignored", the run went on writing frames into holes), the dirty chunk kept its
  dataset and file open, and libhdf5 crashed retrying it at interpreter exit. A frame is one
  chunk and written once, so the cache saved nothing.
* The datasets are opened once and kept, and ``close()`` closes them, then the file, in that
  order, so every close error is seen by the code that can report it, never by a destructor.
* After a failed write the datasets are cut back to the frames written before it (a failed
  ``append_many`` leaves none of its frames), the file refuses further frames, and ``close()``
  still closes it cleanly: the frames before the failure stay readable, also with plain
  ``h5py.File(path, "r")``.

Layout (NeXus-like, what Tiled and areaDetector readers expect):

* ``/entry/data/data``: (N, h, w) frames, chunked one frame per chunk, resizable along N.
* ``/entry/data/timestamp``: (N,) float64, POSIX seconds at which each frame was read out.
* ``/entry/data/frame_number``: (N,) int64, the camera's own frame counter, so a dropped frame
  shows up as a gap.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from daqbridge.errors import InstrumentError

log = logging.getLogger("daqbridge.devices.hdf5")

#: Path of the frame dataset inside every file; StreamResource documents point here.
FRAMES_DATASET = "/entry/data/data"
TIMESTAMP_DATASET = "/entry/data/timestamp"
FRAME_NUMBER_DATASET = "/entry/data/frame_number"

_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
#: libhdf5 puts the OS error into its message ("errno = 28, error message = ...") and h5py
#: raises some of them (flush, close) as RuntimeError without ``errno``.
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


class FrameFileError(InstrumentError):
    """A camera's frame file could not be created or written (disk full, directory not writable).

    Its own type because the fix is on the computer's side, not the camera's: code that reports
    errors (start-up, the CLI) can tell it from a cable or power problem. ``path`` is the file or
    directory, ``os_errno`` the OS error number when there was one, ``free_bytes`` the free space
    on its disk when the error was raised (None when unknown).
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | Path,
        os_errno: int | None = None,
        free_bytes: int | None = None,
        instrument: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.path = str(path)
        self.os_errno = os_errno
        self.free_bytes = free_bytes
        super().__init__(what, instrument=instrument, resource=str(path), fix=fix)


def os_error_of(exc: BaseException) -> tuple[int | None, str]:
    """``(errno, text)`` of the OS error behind an h5py or OS exception, e.g. ``(28, 'No space
    left on device')``; ``(None, first line of the message)`` when there is none."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        found = _ERRNO_IN_TEXT.search(str(exc))
        code = int(found.group(1)) if found else None
    if code:
        return code, os.strerror(code)
    text = str(exc).strip().splitlines()
    return None, (text[0] if text else type(exc).__name__)


def free_space(directory: str | Path) -> tuple[int | None, str]:
    """``(free bytes, "X free of Y on DIR")`` for the disk holding ``directory``."""
    directory = Path(directory)
    try:
        usage = shutil.disk_usage(directory)
    except OSError as exc:
        return None, f"free space on {directory} unknown ({os_error_of(exc)[1]})"
    return usage.free, f"{_size(usage.free)} free of {_size(usage.total)} on {directory}"


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _os_reason(code: int | None, text: str) -> str:
    return f"{text} (errno {code})" if code else text


def directory_error(
    directory: str | Path, exc: BaseException, *, instrument: str | None = None
) -> FrameFileError:
    """The error for a frames directory in which no file can be created, naming the OS error."""
    directory = Path(directory)
    code, text = os_error_of(exc)
    free, space = free_space(directory)
    if code in _NO_ROOM:
        what = f"the frames directory {directory} has no room: {_os_reason(code, text)}; {space}"
        fix = f"free disk space on the disk of {directory}, or set pvcam.frames_dir in the profile"
    else:
        if code in _NOT_WRITABLE:
            what = f"the frames directory {directory} is not writable: {_os_reason(code, text)}"
        else:
            what = f"cannot create the frame file's directory {directory}: {_os_reason(code, text)}"
        fix = (
            f"make {directory} a writable directory (its permissions, its disk mounted "
            "read-write), or set pvcam.frames_dir in the profile"
        )
    return FrameFileError(
        f"{what}. The camera is not at fault: its HDF5 files cannot be created there.",
        path=directory,
        os_errno=code,
        free_bytes=free,
        instrument=instrument,
        fix=f"{fix} to a writable directory with free space.",
    )


def check_frames_dir(directory: str | Path, *, instrument: str | None = None) -> Path:
    """Create the frames directory if needed and prove that a file can be created in it.

    Creates and removes a real file: ``os.access`` says yes to root in a chmod-ed directory and
    knows nothing of quotas, while a camera that finds out at its first run fails the run.
    """
    path = Path(directory).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".daqbridge-probe-"):
            pass
    except OSError as exc:
        raise directory_error(path, exc, instrument=instrument) from exc
    return path


class FrameWriter:
    """Appends frames of one shape to one new HDF5 file, from one thread at a time.

    ``instrument`` only names the camera in error messages. Every failure to create or write
    the file is a :class:`FrameFileError`; after a failed write the writer accepts no more
    frames (``failure`` says why) and ``close()`` still closes the file cleanly.
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
        self._failure: FrameFileError | None = None
        self._file, self._datasets = self._create(attrs or {})

    # --- creation ---------------------------------------------------------------------------

    def _create(self, attrs: Mapping[str, Any]) -> tuple[h5py.File, tuple[h5py.Dataset, ...]]:
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise directory_error(directory, exc, instrument=self.instrument) from exc
        try:
            # libver="latest" is required for SWMR; mode "x" refuses an existing file, so two
            # writers (or two runs) can never share one. rdcc_nbytes=0: see the module's doc.
            f = h5py.File(self.path, "x", libver="latest", rdcc_nbytes=0)
        except FileExistsError as exc:
            raise self._error(
                "the frame file already exists; one file belongs to one writer and one run.",
                fix="use a new file name (the device adds a run-unique token) or move the old "
                "file.",
            ) from exc
        except OSError as exc:
            # Mode "x" refused nothing (that is FileExistsError): whatever was created is ours.
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            raise self._creation_failed(exc) from exc
        datasets: list[h5py.Dataset] = []
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
            datasets.append(frames)
            frames.attrs["interpretation"] = "image"
            for name, dtype in (("timestamp", "f8"), ("frame_number", "i8")):
                datasets.append(
                    data.create_dataset(
                        name, shape=(0,), maxshape=(None,), chunks=(256,), dtype=dtype
                    )
                )
            for key, value in attrs.items():
                entry.attrs[key] = value
            # Everything exists now; from here on the file only grows, and stays readable.
            f.swmr_mode = True
        except BaseException as exc:
            self._close_in_order(f, datasets)
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            if isinstance(exc, OSError | RuntimeError):
                raise self._creation_failed(exc) from exc
            raise
        return f, tuple(datasets)

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

    @property
    def failure(self) -> FrameFileError | None:
        """Why the file stopped accepting frames (a failed write or flush), or None."""
        return self._failure

    def append(
        self, frame: np.ndarray, *, timestamp: float | None = None, frame_number: int = -1
    ) -> int:
        """Append one frame, flushing when the batch is full or old enough; returns the count."""
        return self.append_many([(frame, timestamp, frame_number)])

    def append_many(self, frames: Iterable[tuple[np.ndarray, float | None, int]]) -> int:
        """Append ``(frame, timestamp, frame_number)`` triples, all or none; returns the count.

        A camera point is several frames: if one cannot be written, none of the point's frames
        stay in the file, so point ``i`` is always the same rows of every file.
        """
        checked = [
            (self._checked(frame), time.time() if stamp is None else float(stamp), int(number))
            for frame, stamp, number in frames
        ]
        with self._lock:
            self._writable()
            start = n = self._written
            try:
                for frame, stamp, number in checked:
                    self._write_locked(n, frame, stamp, number)
                    n += 1
                self._written = n
                if (
                    self._written - self._flushed >= self.flush_every
                    or time.monotonic() - self._last_flush >= self.flush_interval
                ):
                    self._flush_locked()
            except Exception as exc:
                raise self._fail_locked(exc, keep=start, frame=n) from exc
            return self._written

    def flush(self) -> int:
        """Make every appended frame durable and visible to SWMR readers. Returns frames flushed."""
        with self._lock:
            if self._failure is not None:
                raise self._refused()
            if self._file is not None and self._flushed < self._written:
                try:
                    self._flush_locked()
                except Exception as exc:
                    raise self._fail_locked(exc, keep=self._flushed, frame=None) from exc
            return self._flushed

    def close(self) -> None:
        """Flush, then close the datasets and the file, in that order; safe to call twice.

        After a failed write, which raised already, it only closes. A failure first met here
        (the last flush, the file's own close) is raised once everything is closed.
        """
        with self._lock:
            f, datasets = self._file, self._datasets
            if f is None:
                return
            error: FrameFileError | None = None
            if self._failure is None and self._flushed < self._written:
                try:
                    self._flush_locked()
                except Exception as exc:  # noqa: BLE001 - raised below, after closing
                    error = self._fail_locked(exc, keep=self._flushed, frame=None)
            self._file, self._datasets = None, ()
            problem = self._close_in_order(f, datasets)
            if problem is not None and error is None and self._failure is None:
                error = self._failed("closing the frame file failed", problem)
                self._failure = error
            elif problem is not None:
                log.warning("%s: closing after a failed write: %s", self.path, problem)
            if error is not None:
                raise error

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        if self._failure is not None:
            state += ", failed"
        return f"<FrameWriter {self.path} {state}, {self._written} frames {self.frame_shape}>"

    # --- helpers ----------------------------------------------------------------------------

    def _checked(self, frame: np.ndarray) -> np.ndarray:
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
        return frame

    def _write_locked(self, n: int, frame: np.ndarray, stamp: float, number: int) -> None:
        for ds, value in zip(self._datasets, (frame, stamp, number), strict=True):
            ds.resize(n + 1, axis=0)
            ds[n] = value

    def _flush_locked(self) -> None:
        for ds in self._datasets:
            ds.flush()
        self._file.flush()
        self._flushed = self._written
        self._last_flush = time.monotonic()

    def _fail_locked(self, exc: BaseException, *, keep: int, frame: int | None) -> FrameFileError:
        """Cut the datasets back to ``keep`` frames, refuse further frames, describe the failure.

        ``frame`` is the index of the frame whose write failed (None: a flush failed).
        """
        try:
            for ds in self._datasets:
                if ds.shape[0] != keep:
                    ds.resize(keep, axis=0)
            self._written = keep
            self._flush_locked()
        except Exception as again:  # noqa: BLE001 - the file keeps its last flushed frames
            log.warning("%s: cutting %s back to %d frames failed: %s", self, self.path, keep, again)
            self._written = self._flushed
        doing = "flushing the frames" if frame is None else f"writing frame {frame + 1}"
        self._failure = self._failed(f"{doing} to the frame file failed", exc)
        return self._failure

    def _failed(self, doing: str, exc: BaseException) -> FrameFileError:
        code, text = os_error_of(exc)
        free, space = free_space(self.path.parent)
        kept = {0: "it holds no frame", 1: "its first frame is in the file and readable"}.get(
            self._flushed, f"its first {self._flushed} frames are in the file and readable"
        )
        if code in _NO_ROOM:
            fix = (
                f"free disk space on the disk of {self.path.parent}, or set pvcam.frames_dir in "
                "the profile to a disk with room; then start a new run."
            )
        elif code in _NOT_WRITABLE:
            fix = (
                f"make {self.path.parent} writable again (a disk that turned read-only needs a "
                "check), or set pvcam.frames_dir in the profile to a writable directory."
            )
        else:
            fix = "check the disk holding the frames directory (the system log); start a new run."
        return FrameFileError(
            f"{doing}: {_os_reason(code, text)}; {space}. No more frames go into {self.path.name}; "
            f"{kept}. The camera is not at fault.",
            path=self.path,
            os_errno=code,
            free_bytes=free,
            instrument=self.instrument,
            fix=fix,
        )

    def _creation_failed(self, exc: BaseException) -> FrameFileError:
        code, text = os_error_of(exc)
        if code in _NOT_WRITABLE or code in _NO_ROOM:
            return directory_error(self.path.parent, exc, instrument=self.instrument)
        return FrameFileError(
            f"cannot create the frame file {self.path}: {_os_reason(code, text)}. The camera is "
            "not at fault.",
            path=self.path,
            os_errno=code,
            free_bytes=free_space(self.path.parent)[0],
            instrument=self.instrument,
            fix="check the disk holding the frames directory (the system log), or set "
            "pvcam.frames_dir in the profile to another directory.",
        )

    def _close_in_order(
        self, f: h5py.File, datasets: Iterable[h5py.Dataset]
    ) -> BaseException | None:
        """Close the datasets, then the file; returns the first error (each is still tried)."""
        first: BaseException | None = None
        for ds in datasets:
            try:
                if ds.id.valid:
                    ds.id.close()
            except Exception as exc:  # noqa: BLE001 - the file is still closed
                first = first or exc
        try:
            f.close()
        except Exception as exc:  # noqa: BLE001
            first = first or exc
        return first

    def _writable(self) -> None:
        if self._file is None:
            raise self._error(
                "frame file is already closed; no more frames can be appended.",
                fix="stage the camera again to open a new file.",
            )
        if self._failure is not None:
            raise self._refused()

    def _refused(self) -> FrameFileError:
        first = self._failure
        assert first is not None
        return FrameFileError(
            f"the frame file takes no more frames after a failed write: {first.what}",
            path=self.path,
            os_errno=first.os_errno,
            free_bytes=first.free_bytes,
            instrument=self.instrument,
            fix=first.fix,
        )

    def _error(self, what: str, fix: str) -> InstrumentError:
        return InstrumentError(what, instrument=self.instrument, resource=str(self.path), fix=fix)
