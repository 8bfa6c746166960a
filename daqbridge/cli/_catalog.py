"""``daqbridge catalog``: list, show, export and recover runs without writing Python.

``list``, ``show`` and ``export`` open the catalog read-only, so they are safe to run while an
experiment writes (they never create files, never recover); a catalog file another process keeps
locked is reported with that process, never as a missing catalog. ``recover`` opens it writable
and puts the runs a crash left in the write-ahead log into the catalog. Run ids may be a full uid,
a unique prefix of 5+ characters, a scan id, or -1 for the latest run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import logging
import os
import sys
from typing import Any

from daqbridge.errors import CatalogError


def register(subparsers: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data",
        metavar="DIR",
        help="data directory (default: $DAQBRIDGE_DATA, else ~/.local/share/daqbridge); "
        "given here, it wins over $DAQBRIDGE_DATA",
    )
    where.add_argument("--uri", help="Tiled server URI instead of the embedded catalog")
    where.add_argument(
        "--api-key", default=os.environ.get("TILED_API_KEY"), help="Tiled API key ($TILED_API_KEY)"
    )

    catalog = subparsers.add_parser(
        "catalog",
        help="list, show, export and recover runs in the catalog",
        description="List, show, export and recover runs in the daqbridge catalog "
        "(see docs/catalog.md).",
    )
    sub = catalog.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND")

    lst = sub.add_parser("list", parents=[where], help="the most recent runs, newest first")
    lst.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", parents=[where], help="metadata, streams and fields of a run")
    show.add_argument("run", metavar="UID", help="uid, uid prefix (5+ chars), scan id or -1")
    show.set_defaults(func=_show)

    export = sub.add_parser("export", parents=[where], help="write one stream of a run as CSV")
    export.add_argument("run", metavar="UID", help="uid, uid prefix (5+ chars), scan id or -1")
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
    catalog.set_defaults(func=lambda args: _no_subcommand(catalog))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _open(args: argparse.Namespace, *, readonly: bool):
    # The in-process Tiled server greets every start on stderr; a CLI should not. Its module sets
    # the level at import, so import it first.
    import tiled.server.app  # noqa: F401

    from daqbridge.runtime.catalog import DATA_ENV, open_catalog

    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    saved = os.environ.get(DATA_ENV)
    if args.data:  # an explicit flag beats the environment, which open_catalog obeys
        os.environ[DATA_ENV] = args.data
    try:
        return open_catalog(
            args.data, uri=args.uri, api_key=args.api_key, readonly=readonly, recover=False
        )
    finally:
        if saved is None:
            os.environ.pop(DATA_ENV, None)
        else:
            os.environ[DATA_ENV] = saved


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _status(exit_status: str | None) -> str:
    return exit_status or "running?"


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CatalogError(
            f"--limit must be at least 1, got {args.limit}.", fix="pass --limit 20, for example."
        )
    with _open(args, readonly=True) as catalog:
        runs = catalog.runs(args.limit)
    if not runs:
        print(f"no runs in {catalog.where}")
        return 0
    print(f"{'scan':>5}  {'uid':8}  {'start':19}  {'plan':16}  {'status':10}  {'events':>6}")
    for run in runs:
        events = "-" if run.events is None else str(run.events)
        scan = "-" if run.scan_id is None else str(run.scan_id)
        plan = (run.plan_name or "-")[:16]
        print(
            f"{scan:>5}  {run.uid[:8]:8}  {_when(run.time):19}  {plan:16}  "
            f"{_status(run.exit_status):10}  {events:>6}"
        )
    return 0


def _run_key(text: str) -> str | int:
    try:
        return int(text)
    except ValueError:
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
        for stream in run:
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
    return 0


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
        dataset = run[args.stream].read()
    text, skipped = _dataset_csv(dataset)
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
    else:
        sys.stdout.write(text)
    return 0


def _dataset_csv(dataset: Any) -> tuple[str, list[tuple[str, str]]]:
    """CSV of the scalar fields of a stream, ``time`` first, other columns in sorted order.

    Sorted because Tiled returns columns in varying order between reads (STACK_NOTES), and an
    export must be reproducible.
    """
    columns: list[tuple[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    if "time" in dataset.coords or "time" in dataset:
        columns.append(("time", dataset["time"].values))
    for name in sorted(str(n) for n in dataset.data_vars):
        if name == "time":
            continue
        values = dataset[name].values
        if values.ndim != 1:
            skipped.append((name, "x".join(str(n) for n in values.shape[1:])))
            continue
        columns.append((name, values))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    rows = len(columns[0][1]) if columns else 0
    for i in range(rows):
        writer.writerow([_cell(values[i]) for _, values in columns])
    return out.getvalue(), skipped


def _cell(value: Any) -> Any:
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    return repr(value) if isinstance(value, float) else value


def _recover(args: argparse.Namespace) -> int:
    from daqbridge.runtime.catalog import resolve_data_dir

    wal = resolve_data_dir(args.data) / "wal"
    if not args.data and not wal.is_dir():  # do not create a catalog just to find it empty
        print(f"nothing to recover in {wal}")
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
