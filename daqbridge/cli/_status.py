"""``daqbridge status``: start the lab of a profile, print what it is doing, shut it down.

It answers the questions of a morning check: does every instrument start, on which port, who
holds each port, do both driver stacks run, does the legacy stack drop measurements, where does
the catalog write. Instruments that fail are reported (the lab starts without them) instead of
stopping the check at the first one. Exit status: 0 all started, 1 something failed (listed),
130 interrupted.

The ports are opened exclusively, so while an experiment runs in another process this reports
that process as the holder of the port (PortUnavailable) rather than interfering with it; use
``%daqstatus`` in the running session instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="start the lab, print ports and holders, stack health and catalog, stop",
        description="Start the lab of a profile, print its status (devices, ports and their "
        "holders, legacy stack health and dropped measurements, catalog, simulators), then shut "
        "it down in order. Exit status 0: everything started; 1: something failed.",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: $DAQBRIDGE_PROFILE, else the embedded simulated lab)",
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long after start-up before reporting (to see polling and drops)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds each instrument may take to connect (default: each driver's own)",
    )
    p.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    from daqbridge.cli._session import quiet_tiled, resolve_profile
    from daqbridge.errors import ConfigError

    if not 0 <= args.settle <= 3600:
        raise ConfigError(
            f"--settle must be between 0 and 3600 seconds, got {args.settle}.",
            key="--settle",
            fix="e.g. --settle 2.",
        )
    logging.basicConfig(level=logging.WARNING, format="daqbridge: %(message)s", stream=sys.stderr)
    quiet_tiled()
    from daqbridge.runtime import Runtime

    runtime = Runtime.from_profile(
        resolve_profile(args.profile),
        sigint="abort",
        allow_partial=True,
        connect_timeout=args.connect_timeout,
    )
    try:
        if args.settle:
            time.sleep(args.settle)
        status = runtime.status()
        status["startup_times"] = dict(runtime.startup_times)
        text = runtime.format_status()
        # The writer counts this process's runs only ("runs 0" at every start): a morning
        # check wants what the catalog holds, and where the scan ids stand.
        status["catalog_runs"] = _runs_in(runtime)
        status["last_scan_id"] = runtime.RE.md.get("scan_id") if runtime.RE else None
    finally:
        report = runtime.close(reason="daqbridge status")
    if args.json:
        status["shutdown"] = report.as_dict()
        print(json.dumps(status, indent=2, default=str))
    else:
        print(text)
        runs = status["catalog_runs"]
        print(
            f"catalog holds {'?' if runs is None else runs} runs; last scan id "
            f"{status['last_scan_id'] or '- (none yet)'}"
        )
        total = sum(v for k, v in status["startup_times"].items() if k != "catalog_wait")
        print(f"start-up: {total:.1f} s; {report.format()}")
    failed = bool(status.get("failures")) or not report.clean
    return 1 if failed else 0


def _runs_in(runtime: object) -> int | None:
    catalog = getattr(runtime, "catalog", None)
    if catalog is None:
        return None
    try:
        return len(catalog)
    except Exception:  # noqa: BLE001 - the status line says '?' rather than failing the check
        return None
