"""``daqbridge ioc``: serve the lab's instruments over EPICS Channel Access.

``daqbridge ioc serve`` starts the lab from the profile, prints one line
``daqbridge ioc ready: prefix P on ADDR:PORT (...)`` once clients can connect, serves until
SIGINT or SIGTERM, then shuts the lab down in order and exits 0. ``--list-pvs`` prints every PV
name (motor record fields included; ``--records-only`` without them) and exits.
"""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    ioc = subparsers.add_parser(
        "ioc",
        help="serve the instruments as EPICS PVs (caproto IOC)",
        description="Serve the lab's instruments over EPICS Channel Access (see "
        "docs/across_machines.md).",
    )
    sub = ioc.add_subparsers(dest="ioc_command", metavar="SUBCOMMAND")
    serve = sub.add_parser(
        "serve",
        help="start the lab and serve it until interrupted",
        description="Start the lab from the profile and serve every device as PVs: positioners "
        "as motor records (<P><id>, fields .RBV .DMOV ...), other devices as <P><id>:<signal>. "
        "Binds to 127.0.0.1 unless --interfaces says otherwise: Channel Access has no "
        "authentication, so expose it only on a network you control.",
    )
    serve.add_argument("--profile", help="lab profile (default: the embedded simulated lab)")
    serve.add_argument("--prefix", default="DAQ:", help="PV prefix (default: DAQ:)")
    serve.add_argument(
        "--interfaces",
        nargs="+",
        default=["127.0.0.1"],
        metavar="ADDR",
        help="addresses to serve on (default: 127.0.0.1, this machine only; 0.0.0.0: all)",
    )
    serve.add_argument(
        "--port", type=int, help="CA server port (default: EPICS_CA_SERVER_PORT or 5064)"
    )
    serve.add_argument(
        "--poll-period",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between the IOC's own readings of each detector (0: only on :Trigger)",
    )
    serve.add_argument("--read-only", action="store_true", help="every PV read-only for clients")
    serve.add_argument(
        "--write-from",
        nargs="+",
        metavar="ADDR",
        help="accept writes only from these client IP addresses",
    )
    serve.add_argument(
        "--connect-timeout", type=float, help="seconds each instrument may take to connect"
    )
    serve.add_argument("--list-pvs", action="store_true", help="print every PV name and exit")
    serve.add_argument(
        "--records-only",
        action="store_true",
        help="with --list-pvs: leave out the motor records' fields",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log what the IOC does")
    serve.set_defaults(func=_serve)
    ioc.set_defaults(func=lambda args: _no_subcommand(ioc))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _serve(args: argparse.Namespace) -> int:
    from daqbridge.ioc import run

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(
        args.profile,
        prefix=args.prefix,
        interfaces=args.interfaces,
        port=args.port,
        poll_period=args.poll_period,
        read_only=args.read_only,
        write_from=args.write_from,
        list_pvs=args.list_pvs,
        all_fields=not args.records_only,
        connect_timeout=args.connect_timeout,
    )
