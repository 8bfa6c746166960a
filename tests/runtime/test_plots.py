"""Each run's PNG and a 1-D scan's peak statistics (daqbridge.runtime._plots), on a real
RunEngine with ophyd's simulated devices and on a started runtime with the wire simulators."""

from __future__ import annotations

import logging
import re

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks import LiveTable
from bluesky.utils import RunEngineInterrupted
from ophyd.sim import det, det4, motor, motor1, motor2

from daqbridge.runtime import Runtime
from daqbridge.runtime._plots import PLOTS_DIR, RunPlots, plot_path

from .conftest import lab_profile, unique


def assert_a_drawn_png(path) -> None:
    """A PNG that matplotlib reads back, with something drawn on it (not one flat colour)."""
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.var(pixels[..., :3])) > 0


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


@pytest.fixture
def engine():
    return RunEngine({}, context_managers=[])


def test_a_1d_scan_prints_peak_statistics_below_the_live_table(engine, headless, tmp_path, capsys):
    plots = RunPlots(tmp_path)
    plots.subscribe(engine)
    # Subscribed after the plots, as a front end's table is after the runtime started.
    engine.subscribe(LiveTable(["motor", "det"]))
    (uid,) = engine(bp.scan([det], motor, -2.2, 1.3, 15))
    out = capsys.readouterr().out
    last_border = max(m.start() for m in re.finditer(r"^\+-", out, re.MULTILINE))
    assert out.index("peak statistics of det vs motor:") > last_border
    start = {"uid": uid, "scan_id": engine.md["scan_id"]}
    assert f"plot: {plot_path(tmp_path, start)}" in out
    assert_a_drawn_png(plot_path(tmp_path, start))


def test_a_grid_scan_is_a_raster_png_without_peak_statistics(engine, headless, tmp_path, capsys):
    plots = RunPlots(tmp_path)
    plots.subscribe(engine)
    engine(bp.grid_scan([det4], motor1, -1, 1, 4, motor2, -1, 1, 5))
    out = capsys.readouterr().out
    assert "peak statistics" not in out
    assert plots.last is not None and plots.last.parent == tmp_path
    assert_a_drawn_png(plots.last)


def test_a_failed_run_keeps_the_plot_of_what_was_measured(engine, headless, tmp_path):
    plots = RunPlots(tmp_path)
    plots.subscribe(engine)
    stops = []
    engine.subscribe(lambda name, doc: stops.append(doc), "stop")
    hints = {"dimensions": [(["motor"], "primary")]}

    @bpp.run_decorator(md={"hints": hints, "motors": ["motor"], "detectors": ["det"]})
    def beam_lost():
        for x in (-1.0, 0.0, 1.0):
            yield from bps.mv(motor, x)
            yield from bps.trigger_and_read([det, motor])
        raise RuntimeError("beam lost")

    with pytest.raises(RuntimeError, match="beam lost"):
        engine(beam_lost())
    assert stops[-1]["exit_status"] == "fail"
    assert plots.last is not None and plots.last.name.endswith(".png")
    assert_a_drawn_png(plots.last)


def test_an_aborted_run_keeps_the_plot_of_what_was_measured(engine, headless, tmp_path):
    plots = RunPlots(tmp_path)
    plots.subscribe(engine)
    stops = []
    engine.subscribe(lambda name, doc: stops.append(doc), "stop")

    def paused_half_way():
        # Pauses after the third point, as Ctrl-C does at the prompt.
        yield from bps.open_run(md={"motors": ["motor"], "detectors": ["det"]})
        for x in (-1.0, 0.0, 1.0):
            yield from bps.mv(motor, x)
            yield from bps.trigger_and_read([det, motor])
        yield from bps.pause()
        yield from bps.close_run()

    with pytest.raises(RunEngineInterrupted):
        engine(paused_half_way())
    assert plots.last is None  # the run is open: nothing drawn yet
    engine.abort("the scientist saw enough")
    assert stops[-1]["exit_status"] == "abort"
    assert plots.last is not None
    assert_a_drawn_png(plots.last)


def test_a_plot_that_cannot_be_written_is_a_warning_not_a_failed_run(
    engine, headless, tmp_path, caplog, capsys
):
    blocked = tmp_path / "plots"
    blocked.write_text("a file where the plots directory should be")
    plots = RunPlots(blocked)
    plots.subscribe(engine)
    stops = []
    engine.subscribe(lambda name, doc: stops.append(doc), "stop")
    with caplog.at_level(logging.WARNING, logger="daqbridge.runtime.plots"):
        (uid,) = engine(bp.scan([det], motor, -1, 1, 5))
    assert stops[-1]["exit_status"] == "success"
    (record,) = [r for r in caplog.records if r.name == "daqbridge.runtime.plots"]
    assert str(blocked) in record.getMessage() and "Fix:" in record.getMessage()
    assert "peak statistics of det vs motor:" in capsys.readouterr().out
    assert blocked.is_file()


def test_with_a_display_the_live_windows_are_the_plot(engine, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DISPLAY", ":0")
    plots = RunPlots(tmp_path / "plots")
    plots.subscribe(engine)
    engine(bp.scan([det], motor, -1, 1, 5))
    assert "peak statistics of det vs motor:" in capsys.readouterr().out
    assert not (tmp_path / "plots").exists()


def test_the_runtime_saves_each_runs_plot_in_its_data_dir(
    runtime_data, runtime_profile, headless, capsys
):
    path = runtime_profile(stage="native", meter="native")
    with Runtime.from_profile(path) as rt:
        (uid,) = rt.RE(bp.scan([rt["meter"]], rt["stage_x"], -1, 1, 3))
        scan_id = rt.RE.md["scan_id"]
    expected = runtime_data / PLOTS_DIR / f"scan_{scan_id}_{uid[:8]}.png"
    assert_a_drawn_png(expected)
    out = capsys.readouterr().out
    assert f"plot: {expected}" in out
    assert "peak statistics of meter_power vs stage_x:" in out


def test_a_session_without_live_plots_saves_pngs_even_with_a_display(
    runtime_data, runtime_catalog_template, tmp_path, monkeypatch
):
    """The queue worker (build_session(plots=False)) has nobody to show a window to."""
    from daqbridge.cli._session import build_session

    monkeypatch.setenv("DISPLAY", ":0")
    path = tmp_path / "lab.toml"
    path.write_text(lab_profile(unique("worker"), stage="native", meter="native"))
    with Runtime.from_profile(path) as rt:
        names = build_session(plots=False, table=False, progress=False, runtime=rt)
        (uid,) = names["RE"](bp.count([rt["meter"]], 2))
        scan_id = rt.RE.md["scan_id"]
    assert_a_drawn_png(runtime_data / PLOTS_DIR / f"scan_{scan_id}_{uid[:8]}.png")
