"""The camera's latest frame for the live view, read from the run's own HDF5 file.

Why from the file, in the panel's process: the camera's frames never travel with the events
(they carry only sums and a StreamDatum), and asking the worker for a frame would take its
interpreter from the RunEngine (see _lab_link.py) or, worse, touch the camera's acquisition.
The StreamResource document names the file and its dataset and each StreamDatum says which
points are flushed to it, so the panel opens the file as an SWMR reader (the writer switched to
SWMR before its first frame, devices/_hdf5.py) and reads the last announced frame: no command
reaches the camera, no byte more goes to its worker.

Cheap by construction: only runs with an HDF5 stream (a camera) are followed, at most one frame
per ``FRAME_EVERY`` seconds however fast the camera goes (a newer request replaces an older one
not read yet), downsampled by whole blocks to at most ``MAX_SIDE`` pixels a side and scaled to
8 bits, so one frame is at most 64 KiB of pixels, fetched by the pages when they are told of it.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from daqbridge.web._hub import Hub

FRAME_EVERY = 0.25
"""Seconds between two frames sent to the pages: four a second is live enough to aim a beam."""
MAX_SIDE = 256
"""Pixels of the longer side of a frame on the page, at most."""
HDF5 = "application/x-hdf5"


@dataclass(frozen=True)
class FrameFile:
    """Where a camera's frames of one run are: announced by its StreamResource document."""

    path: str
    dataset: str
    data_key: str
    frames_per_point: int


@dataclass(frozen=True)
class FrameRequest:
    run: str | None
    file: FrameFile
    points: int
    """Points whose frames the StreamDatum said are in the file; the last one is shown."""


def frame_file(stream_resource: dict[str, Any]) -> FrameFile | str:
    """The file of an HDF5 StreamResource, or why the panel cannot read it."""
    uri = urlparse(stream_resource.get("uri", ""))
    parameters = stream_resource.get("parameters") or {}
    key = stream_resource.get("data_key", "?")
    if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
        return (
            f"{key}: the frames are in {stream_resource.get('uri')!r}, not a file on this "
            "machine; start the panel on the machine that writes the frames to see them live "
            "(history reads them through the catalog)."
        )
    return FrameFile(
        path=uri.path,
        dataset=parameters.get("dataset", "/entry/data/data"),
        data_key=key,
        frames_per_point=int(parameters.get("multiplier", 1)),
    )


def downsample(frame: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Block means of the smallest whole factor that brings both sides to ``max_side`` or less:
    a mean keeps a spot's brightness where a stride would pick pixels out of it."""
    h, w = frame.shape
    factor = max(1, math.ceil(max(h, w) / max_side))
    if factor == 1:
        return frame.astype(np.float64)
    hh, ww = h // factor, w // factor
    blocks = frame[: hh * factor, : ww * factor].astype(np.float64)
    return blocks.reshape(hh, factor, ww, factor).mean(axis=(1, 3))


def to_grey(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint8 from the image's own minimum to maximum (auto-scaled), with that range."""
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8), lo, hi
    scaled = np.rint((image - lo) * (255.0 / (hi - lo)))
    return scaled.astype(np.uint8), lo, hi


def read_frame(file: FrameFile, points: int) -> tuple[np.ndarray, int]:
    """The last frame of point ``points - 1`` (or the last one visible yet) and its row."""
    import h5py

    # swmr=True: the camera's writer keeps the file open and appending; a plain reader could
    # see a half-updated structure or be refused by HDF5's file locking.
    with h5py.File(file.path, "r", swmr=True, libver="latest") as f:
        dataset = f[file.dataset]
        dataset.refresh()
        rows = dataset.shape[0]
        if rows == 0:
            raise LookupError("the file holds no frame yet")
        row = min(points * file.frames_per_point, rows) - 1
        return np.asarray(dataset[row]), row


def frame_message(request: FrameRequest, max_side: int = MAX_SIDE) -> dict[str, Any]:
    """What a page draws: the downsampled frame as base64 bytes, row by row, and its origin."""
    t0 = time.perf_counter()
    frame, row = read_frame(request.file, request.points)
    grey, lo, hi = to_grey(downsample(frame, max_side))
    return {
        "run": request.run,
        "data_key": request.file.data_key,
        "file": request.file.path,
        "dataset": request.file.dataset,
        "row": row,
        "point": row // request.file.frames_per_point,
        "frame_shape": list(frame.shape),
        "width": int(grey.shape[1]),
        "height": int(grey.shape[0]),
        "low": lo,
        "high": hi,
        "pixels": base64.b64encode(grey.tobytes()).decode("ascii"),
        "read_seconds": round(time.perf_counter() - t0, 6),
    }


class CameraView:
    """Follows the documents for camera frames and publishes the latest one as ``frame``.

    ``on_document`` runs on the document thread and only notes what to read; the file is read
    on a thread of its own, so a slow disk never delays the events on their way to the pages.
    """

    def __init__(self, hub: Hub, every: float = FRAME_EVERY, max_side: int = MAX_SIDE) -> None:
        self.hub = hub
        self.every = every
        self.max_side = max_side
        self.latest: dict[str, Any] | None = None
        """The last frame (or error) sent, for a page that opens mid-run."""
        self._run: str | None = None
        self._files: dict[str, FrameFile | str] = {}
        self._wanted: FrameRequest | None = None
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._follow, name="daqbridge-web-camera", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def on_document(self, name: str, doc: dict[str, Any]) -> None:
        with self._changed:
            if name == "start":
                self._run = doc.get("uid")
                self._files.clear()
                self._wanted = None
                self.latest = None
            elif name == "stream_resource" and doc.get("mimetype") == HDF5:
                self._files[doc["uid"]] = frame_file(doc)
            elif name == "stream_datum" and doc.get("stream_resource") in self._files:
                file = self._files[doc["stream_resource"]]
                if isinstance(file, str):
                    if (self.latest or {}).get("error") != file:  # said once per run
                        self._publish({"run": self._run, "error": file})
                    return
                points = int(doc["indices"]["stop"])
                self._wanted = FrameRequest(self._run, file, points)
                self._changed.notify_all()

    def _follow(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopping or self._wanted is not None)
                if self._stopping:
                    return
                request, self._wanted = self._wanted, None
            t0 = time.monotonic()
            try:
                message = frame_message(request, self.max_side)
            except Exception as exc:  # noqa: BLE001 - shown under the image; the run goes on
                message = {
                    "run": request.run,
                    "error": (
                        f"{request.file.data_key}: cannot read the latest frame from "
                        f"{request.file.path} ({type(exc).__name__}: {exc}); the run's data are "
                        "not affected. If the file was moved or deleted, the live image stays "
                        "empty until the next run."
                    ),
                }
            with self._changed:
                if request.run == self._run:  # a new run began while reading: not its frame
                    self._publish(message)
                # Throttle: a request that came meanwhile waits its turn, the newest one wins.
                self._changed.wait_for(
                    lambda: self._stopping, max(0.0, self.every - (time.monotonic() - t0))
                )

    def _publish(self, message: dict[str, Any]) -> None:
        self.latest = message
        # The pages are told, and fetch the pixels (/api/frame): a page that falls behind
        # queues a few hundred bytes per frame, not 87 kB, and skips straight to the latest.
        self.hub.publish("frame", {k: v for k, v in message.items() if k != "pixels"})
