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
import sys
from collections.abc import Sequence

from daqbridge.errors import DaqbridgeError

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
        return int(args.func(args) or 0)
    except DaqbridgeError as exc:
        print(f"daqbridge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("daqbridge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `daqbridge ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
