"""``daqbridge catalog plot RUN``: a PNG of a 1-D scan and its peak statistics, with no display.

The drawing and the statistics are the runtime's (:mod:`daqbridge.runtime._plots`), the code
that saves each run's PNG while it is measured: matplotlib's Agg canvas directly, never pyplot,
so no display is needed (ssh, a queue worker, CI), and bluesky's own ``PeakStats`` fed the run's
events as read back from the catalog, so the numbers are the ones printed after the scan.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError


def _plots() -> Any:
    """The runtime's plotting module, imported when a plot is drawn: importing it imports the
    runtime package (the lab's devices, ophyd-async), which the other catalog commands, all
    registered with this one, do not need (about 0.7 s of every ``catalog list``)."""
    from daqbridge.runtime import _plots as plots

    return plots


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
        hints = dict(primary.metadata.get("hints") or {})
        y_fields = args.field or _plots().detector_fields(start, hints)
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
    _draw(target, x, x_field, curves, _plots().plot_title(start))
    print(f"wrote {target.absolute()}")
    for name, y in curves.items():
        print(_plots().format_peak_stats(x, y, x_field, name))
    return 0


def _motor_field(start: dict[str, Any]) -> str:
    """The one field a 1-D scan moved, from the plan's hints (else its one motor)."""
    motor = _plots().one_d_axis(start)
    if motor is None:
        fields = [f for dim in _plots().scan_axes(start) for f in dim if f != "time"]
        raise CatalogError(
            f"run {start['uid']} ({start.get('plan_name', '?')}) is not a 1-D scan: it moved "
            f"{', '.join(fields) or 'no motor'}.",
            fix="plot a 1-D scan (scan, rel_scan, list_scan); read other runs with "
            "`daqbridge catalog export`.",
        )
    return motor


def _draw(target: Path, x: Any, x_field: str, curves: dict[str, Any], title: str) -> None:
    figure = _plots().draw_curves(x, x_field, curves, title)
    try:
        _plots().save_png(figure, target)
    except OSError as exc:
        raise CatalogError(
            f"cannot write the plot: {exc.strerror or exc}.",
            resource=str(target),
            fix="choose a writable --output path.",
        ) from None
