"""``daqbridge shadow INSTRUMENT_ID``: compare an instrument's legacy and native drivers.

The instrument must be a ``stack = "shadow"`` entry of the profile: the runtime then runs its
native device ``<id>`` and the legacy twin ``<id>_legacy`` (the legacy adapter) on the same port.
The command reads both N times, alternately, prints the report and exits 1 when any pair
disagrees beyond the tolerance or a read failed, so it can gate a migration in a script.
"""

from __future__ import annotations

import argparse
import json
import sys

from daqbridge.errors import ConfigError

LEGACY_SUFFIX = "_legacy"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shadow",
        help="compare the legacy and native drivers of one instrument (shadow mode)",
        description="Read a shadow instrument through its native driver and its legacy twin, "
        "alternately, and report how far apart they are. Exit status 0: every pair agrees "
        "within |native - legacy| <= tolerance + rtol*|native|; 1: disagreements, failed "
        "reads, or the lab did not start; 2: bad arguments or not a shadow instrument.",
    )
    p.add_argument("instrument", metavar="INSTRUMENT_ID", help='id of a stack = "shadow" entry')
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: the embedded simulated lab)",
    )
    p.add_argument("-n", type=int, default=20, help="pairs of readings (default 20)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="absolute tolerance, in the reading's units (default 0)",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=0.01,
        help="relative tolerance, of |native| (default 0.01: two noisy samples of one meter "
        "are not bit-identical)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per reading (default 10)")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="data directory (default: the profile's lab.data_dir; $DAQBRIDGE_DATA wins)",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="run the comparison as a plan, recorded in the catalog (both readings and their "
        "difference per event); the report then has the run uid but no per-driver timing",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_shadow)


def _check_args(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, got {args.n}.", key="-n", fix="e.g. -n 20.")
    for what in ("tolerance", "rtol", "timeout"):
        v = getattr(args, what)
        if not v >= 0 or v == float("inf") or (what == "timeout" and v == 0):
            raise ConfigError(
                f"--{what} must be a finite number {'> 0' if what == 'timeout' else '>= 0'}, "
                f"got {v}.",
                key=f"--{what}",
                fix=f"e.g. --{what} {'10' if what == 'timeout' else '0.001'}.",
            )


def _usage_error(exc: ConfigError) -> int:
    print(f"daqbridge shadow: error: {exc}", file=sys.stderr)
    return 2


def run_shadow(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
    except ConfigError as exc:
        return _usage_error(exc)
    from daqbridge.runtime import Runtime  # imported here: it loads every driver stack
    from daqbridge.runtime._shadow import ShadowComparison, ShadowReport, shadow_compare_plan

    legacy_id = args.instrument + LEGACY_SUFFIX
    # The in-process Tiled server greets every start on stderr; a CLI should not. Its module sets
    # the level at import, so import it first.
    import tiled.server.app  # noqa: F401

    # Only this instrument matters here: another one failing to start must not prevent the check.
    runtime = Runtime.from_profile(args.profile, data_dir=args.data, allow_partial=True)
    try:
        missing = [i for i in (args.instrument, legacy_id) if i not in runtime.devices]
        failed = {k: v for k, v in runtime.failures.items() if k in (args.instrument, legacy_id)}
        if failed:
            raise next(iter(failed.values()))
        if missing:
            return _usage_error(
                ConfigError(
                    f"device(s) {missing} are not running: {args.instrument!r} is not a "
                    "shadow instrument of this profile (or one of its stacks is switched off). "
                    f"Devices: {sorted(runtime.devices)}.",
                    key=f"instruments.{args.instrument}.stack",
                    fix=f'set stack = "shadow" on {args.instrument!r} and keep [stacks] native and '
                    "legacy on ('daqbridge config check' lists the device ids).",
                )
            )
        native, legacy = runtime.devices[args.instrument], runtime.devices[legacy_id]
        if args.record:
            documents: list[tuple[str, dict]] = []
            token = runtime.RE.subscribe(lambda name, doc: documents.append((name, doc)))
            try:
                runtime.run(
                    shadow_compare_plan(legacy, native, args.n, args.tolerance, rtol=args.rtol)
                )
            finally:
                runtime.RE.unsubscribe(token)
            report = ShadowReport.from_documents(documents)
        else:
            report = ShadowComparison(
                native,
                legacy,
                tolerance=args.tolerance,
                rtol=args.rtol,
                instrument=args.instrument,
                timeout=args.timeout,
            ).run(args.n)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(report.format())
    if not report.ok:
        print(
            f"daqbridge shadow: {args.instrument}: {len(report.disagreements)} disagreement(s), "
            f"{len(report.failures)} failed read(s)",
            file=sys.stderr,
        )
        return 1
    return 0
