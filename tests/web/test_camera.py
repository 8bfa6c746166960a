"""The camera's latest frame in the live view: read from the run's HDF5 file as an SWMR reader,
downsampled, auto-scaled to 8-bit grey and drawn on a canvas while the run goes.

The browser test runs on the shared lab (tests/web/conftest.py), whose camera region holds the
simulated spot off-centre, so the page's image can be checked against the file's frame.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from daqbridge.devices._hdf5 import FRAMES_DATASET, FrameWriter
from daqbridge.web._camera import MAX_SIDE, FrameFile, FrameRequest, frame_file, frame_message

from .conftest import fill_plan_form, open_page, screenshot, wait_page

POINTS = 5


def _spot_centre(image: np.ndarray) -> np.ndarray:
    """(row, column) of the brightness-weighted centre of the pixels above half the range."""
    lo, hi = float(image.min()), float(image.max())
    weights = np.where(image >= lo + (hi - lo) / 2, image - lo, 0.0)
    rows, cols = np.indices(image.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def _decoded(message: dict) -> np.ndarray:
    import base64

    grey = np.frombuffer(base64.b64decode(message["pixels"]), np.uint8)
    return grey.reshape(message["height"], message["width"])


def test_the_latest_frame_is_read_while_the_camera_still_writes_the_file(tmp_path):
    rows, cols = np.indices((600, 500))
    spot = 4000.0 * np.exp(-((rows - 150) ** 2 + (cols - 380) ** 2) / (2 * 30.0**2))
    path = tmp_path / "sim_camera_run.h5"
    with FrameWriter(path, (600, 500), flush_every=1) as writer:
        writer.append(np.full((600, 500), 100, np.uint16))
        writer.append((100 + spot).astype(np.uint16))
        writer.flush()
        file = FrameFile(str(path), FRAMES_DATASET, "sim_camera_image", 1)
        message = frame_message(FrameRequest("run-1", file, points=2))
    factor = math.ceil(600 / MAX_SIDE)
    assert (message["height"], message["width"]) == (600 // factor, 500 // factor)
    assert message["row"] == 1 and message["frame_shape"] == [600, 500]
    image = _decoded(message)
    assert (image.min(), image.max()) == (0, 255)
    assert np.allclose(_spot_centre(image) * factor, [150, 380], atol=factor)


def test_frames_on_another_machine_are_named_not_read():
    why = frame_file(
        {
            "uri": "file://daq-pc/data/frames/sim_camera_1.h5",
            "data_key": "sim_camera_image",
            "parameters": {"dataset": FRAMES_DATASET},
        }
    )
    assert isinstance(why, str)
    assert why.startswith("sim_camera_image: the frames are in 'file://daq-pc/")


@pytest.mark.slow
def test_a_count_with_the_camera_shows_its_latest_frame_as_an_image(panel, browser):
    open_page(browser, panel.url)
    fill_plan_form(browser, "count", {"num": str(POINTS), "delay": "0"}, detectors=["sim_camera"])
    shown = wait_page(
        browser,
        lambda d: d.execute_script(
            """
            const r = window.daqbridgePanel.run, c = document.getElementById("camera");
            if (!r || !(r.start.detectors || []).includes("sim_camera") || !r.stop) return false;
            if (c.dataset.run !== r.start.uid || c.dataset.point !== String(arguments[0] - 1))
              return false;
            const rgba = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            const grey = [];
            for (let i = 0; i < rgba.length; i += 4) grey.push(rgba[i]);
            return {width: c.width, height: c.height, grey, file: c.dataset.file,
                    row: Number(c.dataset.row), shown: c.offsetWidth > 0};
            """,
            POINTS,
        ),
    )
    assert shown["shown"]
    # The camera may still hold the file (it closes it at unstage, after the stop document).
    with h5py.File(shown["file"], "r", swmr=True, libver="latest") as f:
        frame = f[FRAMES_DATASET][shown["row"]].astype(np.float64)
    assert shown["row"] == POINTS - 1
    factor = math.ceil(max(frame.shape) / MAX_SIDE)
    assert (shown["height"], shown["width"]) == (frame.shape[0] // factor, frame.shape[1] // factor)
    image = np.array(shown["grey"], np.float64).reshape(shown["height"], shown["width"])
    assert image.min() < image.max(), "the page's image is uniform"
    # The spot is where the file has it, at the downsampled scale (one pixel of rounding).
    assert np.allclose(_spot_centre(image), _spot_centre(frame) / factor, atol=1.0)
    latest = panel.get("api/frame")  # what the page fetched: the run's last frame
    assert (latest["file"], latest["row"]) == (shown["file"], shown["row"])
    browser.execute_script("document.getElementById('camera-box').scrollIntoView()")
    screenshot(browser, "camera")
    panel.wait_for(lambda s: s["manager"].get("manager_state") == "idle")  # for the next tests
