"""``daqbridge shadow INSTRUMENT_ID``: compare an instrument's legacy and native drivers.

The instrument must be a ``stack = "shadow"`` entry of the profile: the runtime then runs its
native device ``<id>`` and the legacy twin ``<id>_legacy`` (the legacy adapter) on the same port.
A bus in shadow (the Elliptec) is compared mount by mount: ``<id>_<mount>`` with
``<id>_<mount>_legacy``. The command reads both N times, alternately, per field, prints the
report and exits with a status a script can gate a migration on (``EXIT_*`` below).

The id, and the profile's stack settings, are checked on the profile alone before the lab
starts: a typo must cost milliseconds and say what was meant, not open every port first.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

from daqbridge.errors import ConfigError, DaqbridgeError

LEGACY_SUFFIX = "_legacy"

EXIT_AGREE = 0
EXIT_DISAGREE = 1
"""At least one pair of readings was further apart than the tolerance: evidence against."""
EXIT_USAGE = 2
EXIT_NOT_COMPARED = 3
"""No verdict: the lab or a twin did not start, or reads failed and nothing disagreed."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shadow",
        help="compare the legacy and native drivers of one instrument (shadow mode)",
        description="Read a shadow instrument (or every mount of a shadow bus) through its "
        "native driver and its legacy twin, alternately, and report how far apart they are. "
        "Exit status 0: every pair agrees within |native - legacy| <= tolerance + "
        "rtol*|native|; 1: some pair disagrees; 2: bad arguments, unknown id, not a shadow "
        "instrument, or a --field one side does not read; 3: could not compare (the lab or a "
        "driver did not start, or reads failed and nothing disagreed).",
    )
    p.add_argument(
        "instrument", metavar="INSTRUMENT_ID", help='id of a stack = "shadow" entry (or bus)'
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: $DAQBRIDGE_PROFILE, else the embedded simulated lab)",
    )
    p.add_argument("-n", type=int, default=20, help="pairs of readings (default 20)")
    p.add_argument(
        "--field",
        metavar="NAME",
        action="append",
        default=[],
        help="channel to compare, as the data key without the device id (e.g. power); "
        "repeatable (default: every channel both drivers read)",
    )
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
    p.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON (a list when several devices or fields are compared)",
    )
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
    return EXIT_USAGE


def _pairs_from_profile(profile: Any, instrument_id: str) -> list[tuple[str, str]]:
    """(native id, legacy id) of every device to compare, from the profile alone."""
    shadow_ids = [i.id for i in profile.enabled_instruments() if i.stack == "shadow"]
    entry = next((i for i in profile.instruments if i.id == instrument_id), None)
    if entry is None:
        known = [i.id for i in profile.instruments] + profile.device_ids()
        close = difflib.get_close_matches(instrument_id, shadow_ids or known, n=1, cutoff=0.6)
        close = close or difflib.get_close_matches(instrument_id, known, n=1, cutoff=0.6)
        raise ConfigError(
            f"no instrument {instrument_id!r} in the profile "
            f"(shadow instruments: {', '.join(shadow_ids) or 'none'}).",
            key="INSTRUMENT_ID",
            fix=(f"did you mean {close[0]!r}? " if close else "")
            + "'daqbridge config check' lists the ids.",
        )
    if entry.stack != "shadow":
        raise ConfigError(
            f"{instrument_id!r} runs on the {entry.stack} stack, not in shadow: there is no "
            f"second driver to compare it with (shadow instruments: "
            f"{', '.join(shadow_ids) or 'none'}).",
            key=f"instruments.{instrument_id}.stack",
            fix=f"'daqbridge config switch {instrument_id} --stack shadow', then rerun.",
        )
    if not entry.enabled or not (profile.stacks.native and profile.stacks.legacy):
        raise ConfigError(
            f"{instrument_id!r} is in shadow but switched off (its entry's enabled, or "
            "[stacks] native / legacy, is false): neither twin would run.",
            key=f"instruments.{instrument_id}.enabled",
            fix="enable the entry and keep [stacks] native and legacy on.",
        )
    parts = entry.parts()
    ids = [f"{instrument_id}_{part}" for part in parts] if parts else [instrument_id]
    return [(i, i + LEGACY_SUFFIX) for i in ids]


def _channels(device: Any) -> list[str]:
    from daqbridge.bridge._shadow import describe_keys  # ophyd-async devices too

    prefix = f"{device.name}_"
    return [k[len(prefix) :] for k in describe_keys(device) if k.startswith(prefix)]


def _fields(native: Any, legacy: Any, asked: list[str]) -> list[tuple[str, str]]:
    """(native key, legacy key) per compared field; a ConfigError naming both sides' channels
    when one is missing, before any reading."""
    from daqbridge.bridge._shadow import main_field

    nch, lch = _channels(native), _channels(legacy)
    if not asked:
        common = [(f"{native.name}_{c}", f"{legacy.name}_{c}") for c in nch if c in lch]
        # The main reading first, paired by hint: a mount's angle is keyed by the device's own
        # name (rot_c vs rot_c_legacy), which no channel suffix matches; comparing only the
        # channels both name alike compared the mounts' setpoints instead of their angles.
        main = (main_field(native), main_field(legacy))
        return [main, *(pair for pair in common if pair != main)]
    missing = [f for f in asked if f not in nch or f not in lch]
    if missing:
        raise ConfigError(
            f"--field {', '.join(missing)}: {native.name!r} reads {nch or 'no channels'}, "
            f"{legacy.name!r} reads {lch or 'no channels'}.",
            key="--field",
            fix="name a channel both drivers read"
            + (
                f", e.g. --field {[c for c in nch if c in lch][0]}." if set(nch) & set(lch) else "."
            ),
        )
    return [(f"{native.name}_{f}", f"{legacy.name}_{f}") for f in asked]


def run_shadow(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
    except ConfigError as exc:
        return _usage_error(exc)
    from daqbridge.cli._session import resolve_profile
    from daqbridge.config import load_profile

    profile_path = resolve_profile(args.profile)
    try:
        # No port check here: another instrument's unplugged adapter must not stop this one's
        # comparison (the runtime starts the lab with allow_partial), and this instrument's own
        # missing port is reported when its driver fails to start.
        profile = load_profile(profile_path)
        pairs = _pairs_from_profile(profile, args.instrument)
    except ConfigError as exc:
        return _usage_error(exc)

    # The in-process Tiled server greets every start on stderr; a CLI should not. Its module sets
    # the level at import, so import it first.
    import tiled.server.app  # noqa: F401

    from daqbridge.bridge._shadow import ShadowComparison, ShadowReport, shadow_compare_plan
    from daqbridge.runtime import Runtime  # imported here: it loads every driver stack

    wanted = {d for pair in pairs for d in pair}
    try:
        # Only this instrument matters here: another one failing to start must not stop the check.
        runtime = Runtime.from_profile(profile_path, data_dir=args.data, allow_partial=True)
    except DaqbridgeError as exc:
        return _not_compared(args.instrument, f"the lab did not start: {exc}")
    reports: list[Any] = []
    try:
        failed = {k: v for k, v in runtime.failures.items() if k in wanted or k == args.instrument}
        if failed:
            return _not_compared(args.instrument, f"{next(iter(failed.values()))}")
        missing = sorted(d for d in wanted if d not in runtime.devices)
        if missing:
            return _not_compared(
                args.instrument,
                f"device(s) {missing} did not start (running: {sorted(runtime.devices)}).",
            )
        try:
            plan = [
                (runtime.devices[n], runtime.devices[lg], nf, lf)
                for n, lg in pairs
                for nf, lf in _fields(runtime.devices[n], runtime.devices[lg], args.field)
            ]
        except ConfigError as exc:
            return _usage_error(exc)
        for native, legacy, nf, lf in plan:
            if args.record:
                documents: list[tuple[str, dict]] = []
                token = runtime.RE.subscribe(
                    lambda name, doc, docs=documents: docs.append((name, doc))
                )
                try:
                    runtime.run(
                        shadow_compare_plan(
                            legacy,
                            native,
                            args.n,
                            args.tolerance,
                            rtol=args.rtol,
                            native_field=nf,
                            legacy_field=lf,
                        )
                    )
                finally:
                    runtime.RE.unsubscribe(token)
                reports.append(ShadowReport.from_documents(documents))
            else:
                reports.append(
                    ShadowComparison(
                        native,
                        legacy,
                        tolerance=args.tolerance,
                        rtol=args.rtol,
                        native_field=nf,
                        legacy_field=lf,
                        instrument=native.name,
                        timeout=args.timeout,
                    ).run(args.n)
                )
    finally:
        runtime.close()
    if args.json:
        body = [r.as_dict() for r in reports]
        print(json.dumps(body[0] if len(body) == 1 else body, indent=2, default=str))
    else:
        print("\n\n".join(r.format() for r in reports))
    disagreements = sum(len(r.disagreements) for r in reports)
    failures = sum(len(r.failures) for r in reports)
    if disagreements or failures or any(r.n == 0 for r in reports):
        print(
            f"daqbridge shadow: {args.instrument}: {disagreements} disagreement(s), "
            f"{failures} failed read(s)",
            file=sys.stderr,
        )
    if disagreements:
        return EXIT_DISAGREE
    if failures or any(r.n == 0 for r in reports):
        return EXIT_NOT_COMPARED
    return EXIT_AGREE


def _not_compared(instrument: str, why: str) -> int:
    print(
        f"daqbridge shadow: {instrument}: could not compare: {why}",
        file=sys.stderr,
    )
    return EXIT_NOT_COMPARED
