"""``daqbridge catalog plot RUN``: a PNG of a 1-D scan and its peak statistics, with no display.

The figure is drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through pyplot, so no GUI backend is chosen or needed: the same command works over ssh, in a
queue worker and in CI. The statistics are bluesky's own ``PeakStats`` fed the run's events as
read back from the catalog, so they are the numbers the live callback would have given.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError

#: PeakStats fields printed, in order; ``max``/``min`` are (position, value) pairs.
STATS = ("max", "min", "com", "cen", "fwhm")


def register(sub: argparse._SubParsersAction, where: argparse.ArgumentParser) -> None:
    plot = sub.add_parser(
        "plot",
        parents=[where],
        help="draw a 1-D scan as a PNG and print its peak statistics",
        description="Draw the hinted detector fields of a 1-D scan against its motor into a PNG "
        "(no display needed) and print bluesky's peak statistics (see docs/catalog.md).",
    )
    plot.add_argument(
        "run", metavar="RUN", help="scan id, uid, uid prefix (5+ chars), or -1 for the newest"
    )
    plot.add_argument(
        "--output", "-o", metavar="FILE", help="PNG to write (default scan<ID>-<uid8>.png here)"
    )
    plot.add_argument(
        "--field", action="append", help="detector field to draw (repeatable; default: hinted)"
    )
    plot.set_defaults(func=plot_run)


def plot_run(args: argparse.Namespace) -> int:
    from ._catalog import _open, _run_key

    with _open(args, readonly=True) as catalog, catalog.reading():
        run = catalog[_run_key(args.run)]
        start = dict(run.metadata["start"])
        if "primary" not in list(run):
            raise CatalogError(
                f"run {start['uid']} has no primary stream: it recorded no events to plot.",
                resource=catalog.where,
                fix="pick a run with events (`daqbridge catalog list` shows their counts).",
            )
        primary = run["primary"]
        x_field = _motor_field(start)
        y_fields = args.field or _detector_fields(start, dict(primary.metadata.get("hints") or {}))
        dataset = primary.read()
    missing = [name for name in [x_field, *y_fields] if name not in dataset]
    if missing or not y_fields:
        raise CatalogError(
            f"run {start['uid']} has no field {', '.join(map(repr, missing)) or 'to plot'} in "
            f"its primary stream (fields: {', '.join(sorted(map(str, dataset.data_vars)))}).",
            resource=catalog.where,
            fix="name the detector field with --field.",
        )
    x = dataset[x_field].values
    curves = {name: dataset[name].values for name in y_fields}
    target = Path(args.output or f"scan{start.get('scan_id', '')}-{start['uid'][:8]}.png")
    _draw(target, x, x_field, curves, _title(start))
    print(f"wrote {target.absolute()}")
    for name, y in curves.items():
        print(f"peak statistics of {name} vs {x_field}:")
        for line in describe_stats(peak_stats(x, y, x_field, name)):
            print(f"  {line}")
    return 0


def _motor_field(start: dict[str, Any]) -> str:
    """The one field a 1-D scan moved, from the plan's hints (else its one motor)."""
    dimensions = (start.get("hints") or {}).get("dimensions") or []
    fields = [f for dim_fields, stream in dimensions if stream == "primary" for f in dim_fields]
    if not dimensions:
        fields = list(start.get("motors") or [])
    if len(fields) != 1 or fields == ["time"]:
        raise CatalogError(
            f"run {start['uid']} ({start.get('plan_name', '?')}) is not a 1-D scan: it moved "
            f"{', '.join(fields) if fields and fields != ['time'] else 'no motor'}.",
            fix="plot a 1-D scan (scan, rel_scan, list_scan); read other runs with "
            "`daqbridge catalog export`.",
        )
    return fields[0]


def _detector_fields(start: dict[str, Any], hints: dict[str, Any]) -> list[str]:
    fields: list[str] = []
    for device in start.get("detectors") or []:
        fields.extend((hints.get(device) or {}).get("fields") or [])
    return fields


def _title(start: dict[str, Any]) -> str:
    return f"scan {start.get('scan_id', '?')}  {start['uid'][:8]}  {start.get('plan_name', '')}"


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


def _draw(target: Path, x: Any, x_field: str, curves: dict[str, Any], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, y in curves.items():
        axes.plot(x, y, "o-", label=name)
    axes.set_xlabel(x_field)
    axes.set_title(title)
    axes.legend()
    try:
        figure.savefig(os.fspath(target), format="png")
    except OSError as exc:
        raise CatalogError(
            f"cannot write the plot: {exc.strerror or exc}.",
            resource=str(target),
            fix="choose a writable --output path.",
        ) from None
