"""``daqbridge config``: check a lab profile, migrate a legacy file, switch an instrument's stack,
print the key reference.

``check`` is what a scientist runs after editing the profile: it prints every problem at once
(file, line, key, fix), not only the first, and for a good profile the table of what will start
where, so a port typed into the wrong entry is visible before the lab runs. It also checks this
machine as start-up will use it: the serial ports exist, and the data directory (and any
camera's frames directory) is a directory this user can write or create; ``--no-port-check``
skips both, for a profile written for another machine. Then what start-up checks before anything
starts (``preflight_issues``, the runtime's own function): the Tiled server answers and takes the
API key, a SQLite catalog's directory is writable, the instruments' SDKs import. ``--offline``
leaves the server alone and says so; ``--no-port-check`` skips all of these too.

``switch`` moves one instrument between the legacy, shadow and native stacks by editing its
entry's ``stack`` key in place (comments and settings kept, so switching back restores the file);
``daqbridge migration status`` says beforehand what changes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daqbridge.errors import ConfigError

EXIT_OK = 0
EXIT_PROBLEMS = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="check a lab profile, migrate a legacy configuration",
        description="Check lab profiles and migrate legacy configuration files.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")

    check = sub.add_parser(
        "check",
        help="validate a profile and show what it starts",
        description="Validate a lab profile before anything opens a port. Prints every "
        "problem with its file, line, key and fix (exit 1), or OK and a summary table.",
    )
    check.add_argument(
        "file", nargs="?", help="profile to check (default: the embedded simulated lab)"
    )
    check.add_argument(
        "--no-port-check",
        action="store_true",
        help="do not check that serial ports exist, that the data and catalog directories are "
        "writable, that instrument SDKs import, nor the Tiled server (checking a profile for "
        "another machine)",
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="do not contact the Tiled server of catalog_uri (reachable, a Tiled server, API key "
        "accepted); the checks of this machine still run",
    )
    check.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")
    check.set_defaults(func=_check)

    migrate = sub.add_parser(
        "migrate",
        help="convert a legacy configuration file into a profile",
        description="Convert a legacy configuration ([instruments.<name>] tables with type, "
        "port, ...) into a lab profile. Every instrument stays on the legacy stack. Reports "
        "what needs a manual decision; exit 1 if anything does.",
    )
    migrate.add_argument("legacy_file", help="legacy TOML configuration")
    migrate.add_argument(
        "-o", "--output", help="write the profile here (default: print it to stdout)"
    )
    migrate.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    migrate.add_argument("--lab-name", help="[lab] name of the new profile")
    migrate.set_defaults(func=_migrate)

    switch = sub.add_parser(
        "switch",
        help="move an instrument to the legacy, shadow or native stack",
        description="Set the stack of one instrument in the profile, editing only that key: "
        "comments, key order and the settings only one stack reads stay, so switching back "
        "gives the same file. The result is checked before the file is replaced. An Elliptec "
        "bus switches with all its mounts. See `daqbridge migration status` first.",
    )
    switch.add_argument("instrument", metavar="ID", help="instrument id (the [[instruments]] id)")
    switch.add_argument("--stack", required=True, metavar="STACK", help="legacy, shadow or native")
    switch.add_argument(
        "--profile",
        metavar="FILE",
        help="profile to edit (default: $DAQBRIDGE_PROFILE)",
    )
    switch.add_argument(
        "--dry-run", action="store_true", help="check and show the switch, write nothing"
    )
    switch.set_defaults(func=_switch)

    reference = sub.add_parser(
        "reference",
        help="print the profile key reference (Markdown)",
        description="Print the key reference generated from the profile models, or update or "
        "check the generated part of docs/profile.md.",
    )
    group = reference.add_mutually_exclusive_group()
    group.add_argument("--update", metavar="DOC", help="rewrite the generated part of DOC")
    group.add_argument("--check", metavar="DOC", help="exit 1 if DOC's reference is outdated")
    reference.set_defaults(func=_reference)

    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# --- check --------------------------------------------------------------------------------------


def _device_cache(disabled: bool):
    """The runtime's DeviceCache when it is available, else a plain path check."""
    from daqbridge.config import PathExists

    if disabled:
        return None
    try:
        from daqbridge.transport import DeviceCache  # type: ignore[attr-defined]

        cache = DeviceCache()
        if callable(getattr(cache, "exists", None)):
            return cache
    except Exception:  # not built yet, or enumeration unavailable on this machine
        pass
    return PathExists()


def _print_issue(issue, stream) -> None:
    where = issue.where or ""
    key = f"{issue.key}: " if issue.key else ""
    label = "error" if issue.severity == "error" else "warning"
    print(f"{where}: {label}: {key}{issue.what}", file=stream)
    print(f"    fix: {issue.fix}", file=stream)


def _check(args: argparse.Namespace) -> int:
    from daqbridge.config import ProfileInvalid, check_profile, preflight_issues

    cache = _device_cache(args.no_port_check)
    try:
        profile, issues = check_profile(args.file, device_cache=cache)
    except ProfileInvalid as exc:  # TOML syntax
        issues, profile = exc.issues, None
    except ConfigError as exc:  # unreadable file
        print(f"daqbridge: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    # What start-up checks before anything starts (the runtime runs the same function), so
    # this cannot say OK for a profile whose Tiled server is down.
    network = not (args.offline or args.no_port_check)
    if profile is not None:
        issues = issues + preflight_issues(profile, network=network, machine=not args.no_port_check)
    if not network and _has_server(profile):
        print(
            f"note: the Tiled server {profile.lab.catalog_uri} was not contacted "
            f"({'--offline' if args.offline else '--no-port-check'}).",
            file=sys.stderr,
        )
    errors = [i for i in issues if i.severity == "error"]
    warnings = [i for i in issues if i.severity == "warning"]
    for issue in errors + warnings:
        _print_issue(issue, sys.stderr)
    if errors or profile is None:
        print(f"{len(errors)} error(s), {len(warnings)} warning(s).", file=sys.stderr)
        return EXIT_PROBLEMS
    print(summary(profile, port_check=cache is not None))
    if warnings and args.strict:
        print(f"{len(warnings)} warning(s) and --strict: failing.", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def _has_server(profile) -> bool:
    uri = profile.lab.catalog_uri if profile is not None else None
    return uri is not None and uri.startswith(("http://", "https://"))


def summary(profile, *, port_check: bool = True) -> str:
    """OK line plus a table: id, driver, stack, hardware, devices."""
    stacks = profile.stacks
    sim = profile.simulation
    head = (
        f"OK: {profile.label} ({profile.lab.name}): {len(profile.instruments)} instrument(s), "
        f"{len(profile.device_ids())} device(s); stacks: native "
        f"{'on' if stacks.native else 'OFF'}, legacy {'on' if stacks.legacy else 'OFF'}; "
        f"simulation {'on, speed ' + format(sim.speed, 'g') if sim.enabled else 'off'}"
        f"{'' if port_check else '; ports not checked, nor the data directory'}."
    )
    rows = [("id", "driver", "stack", "hardware", "devices")]
    for inst in profile.instruments:
        ids = [ref.id for ref in inst.devices()]
        stack = inst.stack if inst.enabled else f"{inst.stack} (disabled)"
        rows.append((inst.id, inst.driver, stack, inst.hardware, ", ".join(ids)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head, ""]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        )
    for c in profile.couplings:
        lines.append(f"coupling: {c.sink} follows the {c.kind} of {c.source} (x{c.factor:g})")
    lines.append(f"data: {profile.data_path()}")
    return "\n".join(lines)


# --- migrate ------------------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    from daqbridge.config import migrate_legacy

    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.force:
        raise ConfigError(
            "output file exists; not overwritten",
            file=str(out),
            fix="choose another -o path or add --force.",
        )
    migration = migrate_legacy(Path(args.legacy_file), lab_name=args.lab_name)
    report = sys.stdout if out is not None else sys.stderr
    if out is not None:
        try:
            out.write_text(migration.profile_text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the profile: {exc.strerror or exc}",
                file=str(out),
                fix="check the directory exists and is writable.",
            ) from None
        print(f"wrote {out} from {migration.source}", file=report)
    else:
        sys.stdout.write(migration.profile_text)
    for note in migration.notes:
        print(f"note: {note}", file=report)
    for decision in migration.decisions:
        print(f"decide: {decision}", file=report)
    for problem in migration.problems:
        print(f"profile check: {problem}", file=report)
    if migration.complete:
        print("migration complete: the profile loads as written.", file=report)
        return EXIT_OK
    print(
        f"migration needs attention: {len(migration.decisions)} decision(s), "
        f"{len(migration.problems)} profile problem(s); edit the profile, then run "
        "`daqbridge config check` on it.",
        file=report,
    )
    return EXIT_PROBLEMS


# --- switch -------------------------------------------------------------------------------------

PROFILE_ENV = "DAQBRIDGE_PROFILE"


def _switch(args: argparse.Namespace) -> int:
    from daqbridge.config import switch_stack

    path = args.profile or os.environ.get(PROFILE_ENV, "").strip()
    if not path:
        raise ConfigError(
            "no profile to edit",
            key="--profile",
            fix=f"give --profile FILE or set ${PROFILE_ENV}; the embedded simulated lab is part "
            "of the installed package and is not edited (copy profiles/sim.toml to change it).",
        )
    result = switch_stack(path, args.instrument, args.stack.strip().lower(), write=not args.dry_run)
    print(result.format())
    if result.changed:
        if args.dry_run:
            print("dry run: nothing written.")
        print(f"what changes at the switch: daqbridge migration status --profile {result.path}")
    return EXIT_OK


# --- reference ----------------------------------------------------------------------------------


def _reference(args: argparse.Namespace) -> int:
    from daqbridge.config import profile_reference_markdown, update_reference_doc

    if args.update:
        update_reference_doc(args.update)
        print(f"updated {args.update}")
        return EXIT_OK
    if args.check:
        if update_reference_doc(args.check, check=True):
            print(f"{args.check} is up to date")
            return EXIT_OK
        print(
            f"{args.check} is outdated: run `daqbridge config reference --update {args.check}`",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    sys.stdout.write(profile_reference_markdown())
    return EXIT_OK
