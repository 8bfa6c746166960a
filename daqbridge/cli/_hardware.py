"""``daqbridge hardware``: which serial ports and VISA instruments this machine sees.

The first question when a profile does not start is "is the instrument there, and under which
name?". This lists the serial ports the OS knows (with their stable /dev/serial/by-id aliases),
VISA resources per backend and, with ``--identify``, each instrument's ``*IDN?`` answer. With
``--profile``, it also says for every instrument of the profile whether its port or resource is
present. Nothing is opened except, with ``--identify``, VISA sessions for one query each.

Pseudo-terminals and ports behind unusual drivers are not listed by the OS: name them with
``--port`` to have them checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from typing import Any

from daqbridge.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hardware",
        help="list serial ports and VISA resources (with identities)",
        description="List the serial ports and VISA resources this machine sees. Exit status 0; "
        "1 when --profile names hardware that is not there.",
    )
    p.add_argument(
        "--visa-backend",
        action="append",
        metavar="BACKEND",
        help="VISA backend to list (repeatable): @py (default), @ivi, @sim, FILE.yaml@sim",
    )
    p.add_argument(
        "--no-visa", action="store_true", help="skip VISA (pyvisa-py's discovery takes seconds)"
    )
    p.add_argument("--identify", action="store_true", help="ask every VISA resource *IDN?")
    p.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="PATH",
        help="also check this port (pseudo-terminals and links the OS does not list)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="also say, for each instrument of this profile, whether its hardware is present",
    )
    p.add_argument("--timeout", type=float, default=1.0, help="seconds per *IDN? query (default 1)")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=run_hardware)


def _profile_rows(profile_path: str, cache: Any) -> list[dict[str, Any]]:
    from daqbridge.config import load_profile

    profile = load_profile(profile_path)
    rows = []
    for inst in profile.enabled_instruments():
        kind = inst.hardware_key
        hardware = inst.hardware
        if kind not in ("port", "resource"):
            present: bool | None = None  # cameras and PVs: not something this lists
        elif hardware in ("pty", "sim-tcp"):
            present = None  # started by the runtime
        else:
            present = cache.exists(hardware)
            if not present and hardware.upper().startswith("TCPIP"):
                present = None  # network instruments are rarely discoverable: unknown
        rows.append(
            {
                "instrument": inst.id,
                "driver": inst.driver,
                "stack": inst.stack,
                kind if kind in ("port", "resource") else "hardware": hardware,
                "present": present,
            }
        )
    return rows


def run_hardware(args: argparse.Namespace) -> int:
    from daqbridge.transport import DeviceCache

    if not args.timeout > 0:
        raise ConfigError(
            f"--timeout must be > 0 seconds, got {args.timeout}.",
            key="--timeout",
            fix="e.g. --timeout 1.",
        )
    backends = [] if args.no_visa else (args.visa_backend or ["@py"])
    cache = DeviceCache(
        extra_ports=args.port, visa_backends=backends, identify_timeout=args.timeout
    )
    missing_ports = [p for p in args.port if not cache.exists(p)]
    try:
        with warnings.catch_warnings():
            # pyvisa-py suggests installing zeroconf for HiSLIP discovery on every listing.
            warnings.filterwarnings("ignore", module="pyvisa_py")
            rows = _profile_rows(args.profile, cache) if args.profile else []
            if args.json:
                report = {
                    "serial_ports": [dataclasses.asdict(p) for p in cache.serial_ports()],
                    "visa_resources": [
                        dataclasses.asdict(r) for r in cache.visa_resources(identify=args.identify)
                    ]
                    if backends
                    else [],
                    "missing_ports": missing_ports,
                    "profile": rows,
                }
                print(json.dumps(report, indent=2, default=str))
            else:
                text = cache.describe(identify=args.identify)
                if not backends:
                    text = text.split("\n\nVISA resources")[0] + "\n\nVISA resources: skipped"
                print(text)
                for path in missing_ports:
                    print(f"\nnot found: {path} (given with --port)")
                if rows:
                    print()
                    print(_format_rows(rows, args.profile))
    finally:
        cache.close()
    absent = [r for r in rows if r["present"] is False]
    if absent or missing_ports:
        print(
            "daqbridge hardware: not present: "
            + ", ".join([f"{r['instrument']}" for r in absent] + missing_ports),
            file=sys.stderr,
        )
        return 1
    return 0


def _format_rows(rows: list[dict[str, Any]], label: str) -> str:
    lines = [f"Instruments of {label}"]
    table = [("INSTRUMENT", "DRIVER", "STACK", "HARDWARE", "PRESENT")]
    for r in rows:
        hardware = r.get("port") or r.get("resource") or r.get("hardware") or "-"
        present = {True: "yes", False: "NO", None: "-"}[r["present"]]
        table.append((r["instrument"], r["driver"], r["stack"], str(hardware), present))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)
