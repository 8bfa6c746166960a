"""``daqbridge catalog``: list, show, export, recover, serve and plot runs without writing Python.

``list``, ``show`` and ``export`` open the catalog read-only, so they are safe to run while an
experiment writes (they never create files, never recover); a catalog file another process keeps
locked is reported with that process, never as a missing catalog. ``recover`` opens it writable
and puts the runs a crash left in the write-ahead log into the catalog. Run ids may be a full uid,
a unique prefix of 5+ characters, a scan id, or -1 for the latest run. ``serve`` and ``plot``
live in ``_catalog_serve`` and ``_catalog_plot``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import sys
from typing import Any

from daqbridge.errors import CatalogError


def register(subparsers: argparse._SubParsersAction) -> None:
    # `serve` serves a local data directory: no --uri, and its --api-key is the key it demands,
    # not one it presents.
    place = argparse.ArgumentParser(add_help=False)
    place.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile whose data to read (default: $DAQBRIDGE_PROFILE, else the embedded "
        "simulated lab, as for `daqbridge run`)",
    )
    place.add_argument(
        "--data",
        metavar="DIR",
        help="data directory instead of the profile's lab.data_dir ($DAQBRIDGE_DATA wins "
        "over both; see docs/catalog.md)",
    )
    where = argparse.ArgumentParser(add_help=False, parents=[place])
    where.add_argument("--uri", help="Tiled server URI instead of the embedded catalog")
    where.add_argument(
        "--api-key", default=os.environ.get("TILED_API_KEY"), help="Tiled API key ($TILED_API_KEY)"
    )

    catalog = subparsers.add_parser(
        "catalog",
        help="list, show, export, recover, serve and plot runs in the catalog",
        description="List, show, export, recover, serve and plot runs in the daqbridge catalog "
        "(see docs/catalog.md).",
    )
    sub = catalog.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND")

    lst = sub.add_parser("list", parents=[where], help="the most recent runs, newest first")
    lst.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", parents=[where], help="metadata, streams and fields of a run")
    show.add_argument(
        "run", metavar="RUN", help="scan id, uid, uid prefix (5+ chars), or -1 for the newest"
    )
    show.add_argument(
        "--values", action="store_true", help="also print each stream's events as a table"
    )
    show.set_defaults(func=_show)

    export = sub.add_parser("export", parents=[where], help="write one stream of a run as CSV")
    export.add_argument(
        "run", metavar="RUN", help="scan id, uid, uid prefix (5+ chars), or -1 for the newest"
    )
    export.add_argument("--format", choices=["csv"], default="csv", help="output format")
    export.add_argument("--stream", default="primary", help="stream to export (default primary)")
    export.add_argument("--output", "-o", metavar="FILE", help="file to write (default stdout)")
    export.set_defaults(func=_export)

    recover = sub.add_parser(
        "recover",
        parents=[where],
        help="put runs left in the write-ahead log by a crash into the catalog",
    )
    recover.set_defaults(func=_recover)

    from . import _catalog_plot, _catalog_serve

    _catalog_serve.register(sub, place)
    _catalog_plot.register(sub, where)
    catalog.set_defaults(func=lambda args: _no_subcommand(catalog))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _locate(args: argparse.Namespace) -> Any:
    """Where the runs are, by the rule every command shares (``locate_data``)."""
    from daqbridge.config import locate_data

    return locate_data(args.profile, args.data)


def _open(args: argparse.Namespace, *, readonly: bool, where: Any = None, run_list: bool = False):
    # Both keep the in-process Tiled server quiet.
    from daqbridge.catalog import open_catalog, open_run_list

    where = where or _locate(args)
    uri = args.uri or where.uri
    api_key = args.api_key if args.uri else (args.api_key or where.api_key)
    if not uri and readonly and not (where.catalog_dir / "catalog.db").is_file():
        raise CatalogError(
            f"there is no catalog in {where.catalog_dir} ({where.source}): no run has been "
            "written there yet.",
            resource=str(where.catalog_dir),
            fix=f"write a first run with `{_same_place('daqbridge run count sim_meter', args)}`,"
            " or name the lab whose runs you want with --profile FILE (or $DAQBRIDGE_PROFILE)"
            " or --data DIR.",
        )
    if run_list and not uri:
        return open_run_list(None, None, where.catalog_dir)
    return open_catalog(
        where.catalog_dir, uri=uri, api_key=api_key, readonly=readonly, recover=False
    )


def _open_run_list(args: argparse.Namespace):
    """The catalog for ``list``: through the catalog server of a lab that is up for this data
    directory when there is one (Tiled's HTTP client: a third of a second to import, against
    two to three for opening the files with Tiled's server), else the files; either way
    without the Bluesky run clients (``open_run_list``)."""
    where = _locate(args)
    if not args.uri and not where.uri:
        from daqbridge.catalog import open_run_list
        from daqbridge.cli._lab import lab_catalog

        served = lab_catalog(where.directory, where.catalog_dir)
        if served is not None:
            try:
                return open_run_list(*served, where.catalog_dir)
            except CatalogError as exc:
                print(
                    f"daqbridge: note: the lab's catalog server does not answer ({exc}); "
                    f"reading {where.catalog_dir} directly.",
                    file=sys.stderr,
                )
    return _open(args, readonly=True, where=where, run_list=True)


def _same_place(command: str, args: argparse.Namespace) -> str:
    """``command`` with the options that make it write where this command looked."""
    import shlex

    if args.data:
        return f"DAQBRIDGE_DATA={shlex.quote(args.data)} {command}"
    if args.profile:
        return f"{command} --profile {shlex.quote(args.profile)}"
    return command


def _when(timestamp: Any, *, precise: bool = False) -> str:
    if timestamp is None:
        return "-"
    when = dt.datetime.fromtimestamp(float(timestamp))
    return when.strftime("%H:%M:%S.%f")[:-3] if precise else when.strftime("%Y-%m-%d %H:%M:%S")


def _status(exit_status: str | None) -> str:
    return exit_status or "running?"


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CatalogError(
            f"--limit must be at least 1, got {args.limit}.", fix="pass --limit 20, for example."
        )
    with _open_run_list(args) as catalog:
        runs = catalog.runs(args.limit)
    if not runs:
        print(f"no runs in {catalog.where}")
        return 0
    print(f"{'scan':>5}  {'uid':8}  {'start':19}  {'plan':16}  {'status':10}  {'points':>6}")
    for run in runs:
        events = "-" if run.points is None else str(run.points)
        scan = "-" if run.scan_id is None else str(run.scan_id)
        plan = (run.plan_name or "-")[:16]
        print(
            f"{scan:>5}  {run.uid[:8]:8}  {_when(run.time):19}  {plan:16}  "
            f"{_status(run.exit_status):10}  {events:>6}"
        )
    if any(run.exit_status is None for run in runs):
        print(
            "running?: no stop document yet. If no process is measuring any more (it was "
            f"killed), `{_same_place('daqbridge catalog recover', args)}` puts in the "
            "documents its write-ahead log kept and marks the run as ended."
        )
    return 0


def _run_key(text: str) -> str:
    """The run as typed: the catalog tells a scan id from a uid prefix of digits (``63121478``)."""
    return text


def _short(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _show(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as catalog, catalog.reading():
        run = catalog[_run_key(args.run)]
        metadata = dict(run.metadata)
        start = metadata.get("start") or {}
        stop = metadata.get("stop") or {}
        print(f"run {start.get('uid')}")
        print(f"  scan id     {start.get('scan_id', '-')}")
        print(f"  plan        {start.get('plan_name', '-')}")
        print(f"  started     {_when(start.get('time'))}")
        if stop:
            print(f"  stopped     {_when(stop.get('time'))}")
        print(f"  exit status {_status(stop.get('exit_status'))}")
        if stop.get("reason"):
            print(f"  reason      {stop['reason']}")
        print("start metadata:")
        for key in sorted(start):
            print(f"  {key}: {_short(start[key])}")
        counts = dict(stop.get("num_events") or {})
        print("streams:")
        for stream in sorted(run, key=lambda name: name != "primary"):  # the points first
            node = run[stream]
            data_keys = dict(node.metadata.get("data_keys") or {})
            events = counts.get(stream)
            if events is None:
                events = _rows_so_far(node)
            print(f"  {stream}: {events} events")
            for field in sorted(data_keys):
                info = data_keys[field]
                shape = "x".join(str(n) for n in info.get("shape") or []) or "scalar"
                units = f" [{info['units']}]" if info.get("units") else ""
                external = " (external file)" if info.get("external") else ""
                print(
                    f"    {field}: {info.get('dtype', '?')} {shape}{units}  "
                    f"from {info.get('source', '?')}{external}"
                )
            if args.values:
                _print_values(node)
    return 0


def _print_values(stream_node: Any) -> None:
    """The stream's events as a table: what a scientist looks at first after a scan."""
    try:
        columns, skipped = _event_columns(stream_node)
    except Exception as exc:  # noqa: BLE001 - a run still being written may not read yet
        print(f"    (no values readable yet: {exc})")
        return
    names = [name for name, _ in columns]
    rows = [
        [_when(v, precise=True) if name == "time" else _value_text(v) for v in values]
        for name, values in columns
    ]
    widths = [max([len(n)] + [len(c) for c in col]) for n, col in zip(names, rows, strict=True)]
    print("    " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
    for i in range(len(rows[0]) if rows else 0):
        print("    " + "  ".join(col[i].rjust(w) for col, w in zip(rows, widths, strict=True)))
    for name, shape in skipped:
        print(f"    ({name}: {shape} per event, not shown)")


def _value_text(value: Any) -> str:
    value = _cell(value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _rows_so_far(stream_node: Any) -> str:
    """Events of a run still going on: rows in the stream's table, or '?' if unreadable."""
    try:
        return str(len(stream_node.read()["time"]))
    except Exception:
        return "?"


def _export(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as catalog, catalog.reading():
        run = catalog[_run_key(args.run)]
        streams = list(run)
        if args.stream not in streams:
            raise CatalogError(
                f"run {run.metadata['start']['uid']} has no stream {args.stream!r} "
                f"(streams: {', '.join(streams) or 'none'}).",
                resource=catalog.where,
                fix="pick one of the listed streams with --stream.",
            )
        uid = run.metadata["start"]["uid"]
        columns, skipped = _event_columns(run[args.stream])
    text = _csv(columns)
    for name, shape in skipped:
        print(
            f"daqbridge: note: field {name!r} ({shape} per event) is not a scalar; "
            "left out of the CSV.",
            file=sys.stderr,
        )
    if args.output:
        try:
            with open(args.output, "w", newline="") as stream:
                stream.write(text)
        except OSError as exc:
            raise CatalogError(
                f"cannot write the export: {exc}.",
                resource=args.output,
                fix="choose a writable --output path.",
            ) from exc
        events = len(columns[0][1]) if columns else 0
        print(
            f"wrote {events} events of stream {args.stream!r} of run {uid} to "
            f"{os.path.abspath(args.output)}"
        )
    else:
        sys.stdout.write(text)
    return 0


def _event_columns(stream_node: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """(columns, fields left out): ``seq_num`` and ``time`` first, then the scalar fields in
    sorted order; fields with more than one value per event (frames, spectra) are left out.

    Sorted because Tiled returns columns in varying order between reads (STACK_NOTES), and an
    export must be reproducible. ``seq_num`` is not in the stream's Dataset: it is read from
    the stream's own ``seq_num`` column, so a gap in a run's events shows.
    """
    dataset = stream_node.read()
    columns: list[tuple[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    if "seq_num" in list(stream_node):
        columns.append(("seq_num", stream_node["seq_num"].read()))
    if "time" in dataset.coords or "time" in dataset:
        columns.append(("time", dataset["time"].values))
    for name in sorted(str(n) for n in dataset.data_vars):
        if name in ("time", "seq_num"):
            continue
        values = dataset[name].values
        if values.ndim != 1:
            skipped.append((name, "x".join(str(n) for n in values.shape[1:])))
            continue
        columns.append((name, values))
    return columns, skipped


def _csv(columns: list[tuple[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    rows = len(columns[0][1]) if columns else 0
    for i in range(rows):
        writer.writerow([_cell(values[i]) for _, values in columns])
    return out.getvalue()


def _cell(value: Any) -> Any:
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    return repr(value) if isinstance(value, float) else value


def _recover(args: argparse.Namespace) -> int:
    where = _locate(args)
    wal = where.catalog_dir / "wal"
    if not wal.is_dir():  # do not create a catalog just to find it empty
        print(f"nothing to recover in {wal} ({where.source})")
        return 0
    with _open(args, readonly=False) as catalog:
        results = catalog.recover()
    if not results:
        print(f"nothing to recover in {catalog.wal_dir}")
        return 0
    failed = 0
    for result in results:
        failed += result.action == "failed"
        uid = result.uid or result.log.name
        note = f"  ({result.note})" if result.note else ""
        print(
            f"{uid}: {result.action}, {result.events} events, "
            f"exit status {result.exit_status or '-'}{note}"
        )
    return 1 if failed else 0
