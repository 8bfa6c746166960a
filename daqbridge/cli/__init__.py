"""The ``daqbridge`` command line.

Each subcommand lives in its own module under ``daqbridge.cli`` exposing
``register(subparsers) -> None``; the module adds its parser and sets ``func`` (a callable taking
the parsed namespace and returning an exit code). Modules are imported lazily by name so that
``daqbridge sim serve`` does not pay for importing Tiled, and a broken optional part cannot stop
the others from working.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from daqbridge.errors import ConfigError, DaqbridgeError

EXIT_USAGE = 2
"""Exit status of a mistake in the command, as argparse's: a ``--profile`` that names no file, an
unknown simulator kind, a lab that cannot start as configured (what is checked before start:
``exit_status`` of ``daqbridge.config.NotReady``). Other errors exit 1."""

# subcommand name -> module (relative to daqbridge.cli) that registers it
SUBCOMMANDS: dict[str, str] = {
    "sim": "_sim",
    "run": "_run",
    "config": "_config",
    "catalog": "_catalog",
    "hardware": "_hardware",
    "status": "_status",
    "shadow": "_shadow",
    "ioc": "_ioc",
    "migration": "_migration",
    "lab": "_lab",
    "web": "_web",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daqbridge",
        description="Run legacy and native instrument drivers together under one Bluesky "
        "RunEngine, on shared hardware, into one catalog.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(f"daqbridge.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"daqbridge.cli.{module}":
                raise
            continue  # subcommand not built yet
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # `run` reads options written after PLAN itself, and checks there.
        missing = None if args.command == "run" else missing_profile(getattr(args, "profile", None))
        if missing is not None:
            print(f"daqbridge: error: {missing}", file=sys.stderr)
            return EXIT_USAGE
        return int(args.func(args) or 0)
    except DaqbridgeError as exc:
        print(f"daqbridge: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)
    except KeyboardInterrupt:
        print("daqbridge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `daqbridge ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


def missing_profile(path: str | None) -> ConfigError | None:
    """The loader's own error for a ``--profile`` that names no file, before the command does
    anything: a path typed wrong is a mistake in the command (exit 2), not a failure."""
    if not isinstance(path, str) or not path or os.path.lexists(path):
        return None
    from daqbridge.config import load_profile

    try:
        load_profile(path)
    except ConfigError as exc:
        return exc
    return None  # it was TOML text after all: the command loads it as such


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
