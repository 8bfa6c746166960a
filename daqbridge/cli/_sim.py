"""``daqbridge sim``: run an instrument simulator in its own process.

``daqbridge sim serve KIND`` prints exactly one line, ``KIND ready on <path-or-address>``, once
the port can be opened, then serves until SIGINT or SIGTERM and exits 0. Scripts and tests wait
for that line instead of sleeping. ``daqbridge sim list`` prints the kinds.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any

from daqbridge.cli import EXIT_USAGE
from daqbridge.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser(
        "sim",
        help="run wire-level instrument simulators",
        description="Run wire-level instrument simulators (see docs/simulators.md).",
    )
    sub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    lst = sub.add_parser("list", help="list the simulator kinds")
    lst.set_defaults(func=_list)

    serve = sub.add_parser(
        "serve",
        help="serve one simulator on a pseudo-terminal (or TCP for scpi) until interrupted",
        description="Serve one simulator until SIGINT/SIGTERM. Prints 'KIND ready on PATH' once "
        "the port is usable.",
    )
    serve.add_argument("kind", help="simulator kind (see `daqbridge sim list`)")
    serve.add_argument("--speed", type=float, help="time scale of motion/settling (10 = 10x)")
    serve.add_argument("--link", help="path of the symlink to the pty (default: a temp dir)")
    serve.add_argument("--addresses", help="Elliptec bus addresses, e.g. 2,3,8")
    serve.add_argument("--reply-delay", type=float, help="extra seconds before every reply")
    serve.add_argument("--drop-probability", type=float, help="chance a reply is lost (0-1)")
    serve.add_argument("--garble-probability", type=float, help="chance a reply is garbled (0-1)")
    serve.add_argument("--echo", action="store_true", help="echo every command line back")
    serve.add_argument("--stuck", action="store_true", help="swallow commands, answer nothing")
    serve.add_argument("--byte-time", action="store_true", help="add per-byte baud-rate delays")
    serve.add_argument("--seed", type=int, help="seed of the random faults and noise")
    serve.add_argument("--port", type=int, help="TCP port for scpi (default: a free port)")
    serve.add_argument(
        "--personality", help="scpi: the instrument to answer as (generic, 34401a, keithley2000)"
    )
    serve.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other simulator option (repeatable), e.g. -o noise=0",
    )
    serve.set_defaults(func=_serve)
    sim.set_defaults(func=lambda args: _no_subcommand(sim))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _list(args: argparse.Namespace) -> int:
    from daqbridge.sim._registry import SERIAL_KINDS, SOCKET_KINDS, known_kinds

    for kind in known_kinds():
        how = "serial (pty)" if kind in SERIAL_KINDS else "TCP socket"
        target = SERIAL_KINDS.get(kind) or SOCKET_KINDS[kind]
        print(f"{kind:14s} {how:13s} {target}")
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in (
        ("speed", args.speed),
        ("addresses", args.addresses),
        ("reply_delay", args.reply_delay),
        ("drop_probability", args.drop_probability),
        ("garble_probability", args.garble_probability),
        ("seed", args.seed),
        ("personality", args.personality),
    ):
        if value is not None:
            options[key] = value if key != "addresses" else str(value)
    for key in ("echo", "stuck", "byte_time"):
        if getattr(args, key):
            options[key] = True
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(
                f"--option expects KEY=VALUE, got {item!r}.",
                key="--option",
                fix="write e.g. -o noise=0",
            )
        options[key.strip()] = value
    return options


class _Stop:
    """SIGINT/SIGTERM set an event instead of raising, so shutdown runs the normal cleanup."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> threading.Event:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _announce(kind: str, where: str) -> None:
    print(f"{kind} ready on {where}", flush=True)


def _serve(args: argparse.Namespace) -> int:
    from daqbridge.sim._registry import SOCKET_KINDS, _kind_error, known_kinds

    kind = args.kind.lower()
    if kind not in known_kinds():  # a mistake in the command, as argparse's: exit status 2
        print(f"daqbridge: error: {_kind_error(args.kind)}", file=sys.stderr)
        return EXIT_USAGE
    options = _options(args)
    with _Stop() as stop:
        if kind in SOCKET_KINDS:
            if args.link:
                raise ConfigError(f"--link applies to serial simulators, not {kind}.", key="--link")
            cm = _serve_socket(kind, args.port, options)
        else:
            if args.port is not None:
                raise ConfigError(
                    f"--port applies to the scpi simulator, not {kind}.",
                    key="--port",
                    fix="drop --port; serial simulators are served on a pty (--link PATH).",
                )
            cm = _serve_serial(kind, args.link, options)
        with cm as where:
            _announce(kind, where)
            while not stop.wait(1.0):
                pass
    return 0


@contextlib.contextmanager
def _serve_serial(kind: str, link: str | None, options: dict[str, Any]):
    from daqbridge.sim._pty import serve_pty

    with serve_pty(kind, link=link, **options) as server:
        yield server.path


@contextlib.contextmanager
def _serve_socket(kind: str, port: int | None, options: dict[str, Any]):
    from daqbridge.sim._registry import load_target

    serve_tcp = load_target(kind)  # clear ConfigError if daqbridge.sim.scpi is not there yet
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": port or 0}
    kwargs.update(options)
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(serve_tcp(**kwargs))
        except TypeError as exc:
            raise ConfigError(
                f"the {kind} simulator does not accept these options "
                f"({', '.join(sorted(options)) or 'none'}): {exc}",
                fix=f"run `daqbridge sim serve {kind}` with --port only, or see "
                "docs/simulators.md.",
            ) from exc
        yield f"TCPIP0::127.0.0.1::{_tcp_port(server, port)}::SOCKET"


def _tcp_port(server: Any, requested: int | None) -> int:
    """The port a serve_tcp context yielded, whatever shape it took (server, tuple, int)."""
    for attr in ("port", "server_port"):
        value = getattr(server, attr, None)
        if isinstance(value, int):
            return value
    address = getattr(server, "address", None) or getattr(server, "server_address", None)
    if isinstance(server, tuple | list):
        address = server
    if isinstance(address, tuple | list) and len(address) >= 2:
        return int(address[1])
    if isinstance(server, int):
        return server
    if requested:
        return requested
    raise ConfigError(
        "the scpi simulator did not report its TCP port.",
        fix="pass --port N explicitly.",
    )
