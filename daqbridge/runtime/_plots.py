"""Each run's plot as a PNG beside the data, and peak statistics after every 1-D scan.

    <data_dir>/plots/scan_<scan_id>_<uid8>.png

The RunEngine subscriber :class:`RunPlots` is hooked in once by the runtime, so the command
line, the IPython profile and the lab server's worker all get it. With a display,
BestEffortCallback's live windows are the plot and no PNG is written; headless (ssh, CI, the queue
worker) the PNG is the plot. ``daqbridge catalog plot`` draws with the same code from the
catalog, so the file written live and the one drawn later look alike.

Why it is built this way:

* The figure is drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
  never through pyplot: no GUI backend is chosen, and nothing of pyplot's global state is shared
  with BestEffortCallback's windows. matplotlib is imported only when a PNG is drawn (about
  0.7 s to import on a loaded lab PC), so a run that asks for no plot does not pay for it.
* It is drawn when the run stops, from the values the events carried, also for an aborted or
  failed run (what was measured is what the scientist looks at next). Drawing 11 points takes
  about 0.06 s; the run's data is already closed by then.
* A plot is a convenience: any failure drawing or writing it is a logged warning naming the file
  and the fix, never an exception into the RunEngine (a subscriber that raises fails the run).
  The file is written under a temporary name and renamed, so a reader never sees half a PNG.
* Peak statistics are bluesky's ``PeakStats`` fed the run's events, the numbers
  BestEffortCallback computes for its live plots; only for 1-D scans (one motor), never for a
  count or a grid.
* The subscriber puts itself last at every run start (it subscribes for the run and leaves at its
  stop): subscribers run in the order they subscribed, and the front ends subscribe their live
  tables after the runtime started, so printed at its own stop the statistics would land inside
  the table, above its bottom border.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("daqbridge.runtime.plots")

PLOTS_DIR = "plots"
"""Sub-directory of the data directory that holds the runs' PNGs."""

#: PeakStats fields printed, in order; ``max``/``min`` are (position, value) pairs.
STATS = ("max", "min", "com", "cen", "fwhm")

SEQ_NUM = "seq_num"


def has_display() -> bool:
    """True when matplotlib windows can open: a desktop session on Linux, always elsewhere."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def plot_path(plots_dir: Path, start: Mapping[str, Any]) -> Path:
    """Where the PNG of the run with this start document goes."""
    return Path(plots_dir) / f"scan_{start.get('scan_id', 0)}_{start['uid'][:8]}.png"


def plot_title(start: Mapping[str, Any], exit_status: str | None = None) -> str:
    title = f"scan {start.get('scan_id', '?')}  {start['uid'][:8]}  {start.get('plan_name', '')}"
    if exit_status and exit_status != "success":
        title += f"  ({exit_status})"
    return title


def scan_axes(start: Mapping[str, Any]) -> list[list[str]]:
    """The fields each dimension of the primary stream moved (``[["time"]]`` for a count).

    From the plan's ``hints.dimensions`` as BestEffortCallback reads them; a plan without hints
    moved its ``motors``, one dimension each."""
    dimensions = (start.get("hints") or {}).get("dimensions")
    if dimensions:
        return [list(fields) for fields, stream in dimensions if stream == "primary"]
    motors = list(start.get("motors") or [])
    return [[m] for m in motors] or [["time"]]


def one_d_axis(start: Mapping[str, Any]) -> str | None:
    """The motor field of a 1-D scan (one dimension, one field, not time), else None."""
    axes = scan_axes(start)
    if len(axes) == 1 and len(axes[0]) == 1 and axes[0] != ["time"]:
        return axes[0][0]
    return None


def detector_fields(start: Mapping[str, Any], hints: Mapping[str, Any]) -> list[str]:
    """The hinted fields of the run's detectors, from the primary descriptor's ``hints``."""
    fields: list[str] = []
    for device in start.get("detectors") or []:
        fields.extend((hints.get(device) or {}).get("fields") or [])
    return fields


def _scalar_numbers(descriptor: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The names a line can be drawn of: numbers, not arrays or frames kept in files."""
    keys = descriptor.get("data_keys") or {}
    return [
        name
        for name in names
        if name in keys
        and keys[name].get("dtype") in ("number", "integer")
        and not keys[name].get("shape")
        and not keys[name].get("external")
    ]


# --- drawing ----------------------------------------------------------------------------------


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def draw_curves(x: Any, x_label: str, curves: Mapping[str, Any], title: str) -> Any:
    """Detector fields against one axis (a motor, or the event number of a count)."""
    figure = _figure()
    axes = figure.add_subplot()
    for name, y in curves.items():
        axes.plot(x, y, "o-", label=name)
    axes.set_xlabel(x_label)
    axes.set_title(title)
    axes.legend()
    return figure


def draw_raster(
    x: Any, y: Any, x_label: str, y_label: str, values: Mapping[str, Any], title: str
) -> Any:
    """A 2-D raster as a scatter coloured by each detector field: right for a snaked or
    irregular grid too, and for a raster that was aborted half-way."""
    figure = _figure()
    for i, (name, v) in enumerate(values.items(), start=1):
        axes = figure.add_subplot(1, len(values), i)
        points = axes.scatter(x, y, c=v, marker="s")
        figure.colorbar(points, ax=axes, label=name)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def save_png(figure: Any, target: Path) -> None:
    """Write the figure to ``target`` atomically (a temporary name in the same directory, then
    a rename): a reader, or a crash, never leaves half a PNG under the real name."""
    target = Path(target)
    # Not tempfile.mkstemp: its files are private (0600); a plot is read by the whole group.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- peak statistics --------------------------------------------------------------------------


def peak_stats(x: Any, y: Any, x_field: str, y_field: str) -> Any:
    """bluesky's PeakStats, fed the events as documents so its own code computes them."""
    from bluesky.callbacks.fitting import PeakStats

    stats = PeakStats(x_field, y_field)
    stats("start", {"uid": "plot", "time": 0})
    stats("descriptor", {"uid": "d", "run_start": "plot", "name": "primary", "data_keys": {}})
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        stats(
            "event",
            {"descriptor": "d", "seq_num": i + 1, "data": {x_field: xi, y_field: yi}},
        )
    stats("stop", {"uid": "s", "run_start": "plot", "exit_status": "success"})
    return stats


def describe_stats(stats: Any) -> list[str]:
    """One line per statistic; ``-`` where it is not defined (no half-maximum crossing)."""
    lines = []
    for name in STATS:
        value = getattr(stats, name)
        if value is None:
            text = "-"
        elif name in ("max", "min"):
            text = f"{float(value[1]):.6g} at {float(value[0]):.6g}"
        else:
            text = f"{float(value):.6g}"
        lines.append(f"{name:5} {text}")
    return lines


def format_peak_stats(x: Any, y: Any, x_field: str, y_field: str) -> str:
    lines = [f"peak statistics of {y_field} vs {x_field}:"]
    lines += [f"  {line}" for line in describe_stats(peak_stats(x, y, x_field, y_field))]
    return "\n".join(lines)


# --- the subscriber ---------------------------------------------------------------------------


@dataclass
class _Run:
    start: Mapping[str, Any]
    descriptor: str | None = None
    fields: list[str] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)


class RunPlots:
    """RunEngine subscriber: the run's plot as a PNG (``png``) and its peak statistics
    (``peaks``), both when the run stops.

    ``png``: None draws one only where no display exists (:func:`has_display`); a front end
    that knows better sets it (the queue worker: always; ``daqbridge run --no-plot``: never).
    ``out`` receives the printed lines (peak statistics, the PNG's path).
    Subscribe it with :meth:`subscribe`, which makes it the last subscriber of every run.
    """

    def __init__(
        self,
        plots_dir: str | os.PathLike[str],
        *,
        png: bool | None = None,
        peaks: bool = True,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.plots_dir = Path(plots_dir)
        self.png = png
        self.peaks = peaks
        self.out = out or _print
        self.last: Path | None = None
        """The PNG written last (None: none yet)."""
        self._run: _Run | None = None
        self._engine: Any = None
        self._token: int | None = None

    def subscribe(self, RE: Any) -> int:  # noqa: N803 - bluesky's name
        """Follow every run of ``RE``; returns the token of the start hook."""
        self._engine = RE
        return RE.subscribe(self._run_opened, "start")

    def _run_opened(self, name: str, doc: Mapping[str, Any]) -> None:
        # Registered now, after whatever the front end subscribed: see the module docstring.
        # bluesky calls the subscribers of a document from a copy of its list, so this one
        # gets the documents from the descriptor on, and the start document from here.
        if self._token is not None:
            self._engine.unsubscribe(self._token)
        self._token = self._engine.subscribe(self)
        self(name, doc)

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        try:
            if name == "start":
                self._run = _Run(start=doc)
            elif name == "descriptor":
                self._descriptor(doc)
            elif name == "event":
                self._event(doc)
            elif name == "event_page":
                from event_model import unpack_event_page

                for event in unpack_event_page(doc):
                    self._event(event)
            elif name == "stop":
                self._stop(doc)
        except Exception as exc:  # noqa: BLE001 - a plot never fails a run
            log.warning("the run's plot or peak statistics were not made: %s", exc)
            if name == "stop":
                self._run = None

    def _descriptor(self, doc: Mapping[str, Any]) -> None:
        run = self._run
        if run is None or doc.get("name") != "primary" or run.descriptor is not None:
            return
        run.descriptor = doc["uid"]
        axes = [f for fields in scan_axes(run.start) for f in fields if f != "time"]
        run.axes = _scalar_numbers(doc, axes)
        run.fields = _scalar_numbers(doc, detector_fields(run.start, doc.get("hints") or {}))
        run.columns = {name: [] for name in [SEQ_NUM, *run.axes, *run.fields]}

    def _event(self, doc: Mapping[str, Any]) -> None:
        run = self._run
        if run is None or doc.get("descriptor") != run.descriptor:
            return
        data = doc["data"]
        if any(name not in data for name in [*run.axes, *run.fields]):
            return  # a partial event cannot be a point of every curve
        run.columns[SEQ_NUM].append(doc["seq_num"])
        for name in [*run.axes, *run.fields]:
            run.columns[name].append(data[name])

    def _stop(self, doc: Mapping[str, Any]) -> None:
        run, self._run = self._run, None
        if self._token is not None:
            self._engine.unsubscribe(self._token)
            self._token = None
        if run is None or not run.fields or not run.columns.get(SEQ_NUM):
            return  # nothing hinted, or no event: nothing to draw
        motor = one_d_axis(run.start)
        if self.peaks and motor is not None and motor in run.columns:
            for name in run.fields:
                self._print_peak_stats(run, motor, name)
        png = not has_display() if self.png is None else self.png
        if png:
            self._write_png(run, doc.get("exit_status"))

    def _print_peak_stats(self, run: _Run, motor: str, name: str) -> None:
        try:
            text = format_peak_stats(run.columns[motor], run.columns[name], motor, name)
        except Exception as exc:  # noqa: BLE001 - bluesky's PeakStats on a degenerate curve
            log.warning("no peak statistics of %s vs %s: %s", name, motor, exc)
            return
        self.out(text)

    def _write_png(self, run: _Run, exit_status: str | None) -> None:
        target = plot_path(self.plots_dir, run.start)
        try:
            figure = _draw_run(run, plot_title(run.start, exit_status))
            target.parent.mkdir(parents=True, exist_ok=True)
            save_png(figure, target)
        except OSError as exc:
            log.warning(
                "the plot of run %s was not saved to %s: %s. Fix: make %s a writable "
                "directory; `daqbridge catalog plot %s` draws it later from the catalog.",
                run.start["uid"],
                target,
                exc.strerror or exc,
                target.parent,
                run.start["uid"],
            )
            return
        except Exception as exc:  # noqa: BLE001 - matplotlib's error on odd data
            log.warning(
                "the plot of run %s was not drawn: %s: %s",
                run.start["uid"],
                type(exc).__name__,
                exc,
            )
            return
        self.last = target
        self.out(f"plot: {target}")


def _draw_run(run: _Run, title: str) -> Any:
    columns = run.columns
    curves = {name: columns[name] for name in run.fields}
    dims = [fields for fields in scan_axes(run.start) if fields != ["time"]]
    if len(dims) == 2 and len(run.axes) == 2:
        slow, fast = run.axes
        return draw_raster(columns[fast], columns[slow], fast, slow, curves, title)
    if len(dims) == 1 and len(run.axes) >= 1:
        motor = run.axes[0]
        return draw_curves(columns[motor], motor, curves, title)
    # A count (the event number is what changed), or more dimensions than a plane shows.
    return draw_curves(columns[SEQ_NUM], SEQ_NUM, curves, title)


def _print(text: str) -> None:
    print(text, flush=True)
