"""Run the IOC: start the lab, serve it over Channel Access, shut down in order.

Why it is built this way:

* The runtime is started first and completely (profile checked, ports opened, identities
  verified) before a single PV is served, so a client never connects to half a lab; and it is
  closed last (``runtime.close()``, its ordered shutdown) after the server has stopped taking
  requests, so no CA write reaches a device that is being closed.
* The CA environment is set here, before caproto reads it: the server binds to the interfaces
  asked for (127.0.0.1 by default: only this machine can reach it) and sends beacons only there.
  Channel Access has no authentication; exposing the IOC is a decision made with
  ``--interfaces``, a firewall and ``--read-only``/``--write-from`` (docs/across_machines.md).
* One line, ``daqbridge ioc ready: ...``, is printed once the sockets are bound and every PV has
  its initial value, so scripts and tests wait for it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from daqbridge.errors import ConfigError
from daqbridge.ioc._server import DEFAULT_POLL_PERIOD, DEFAULT_PREFIX, LabIOC, check_prefix

log = logging.getLogger("daqbridge.ioc")

READY = "daqbridge ioc ready"
SERVER_STOP_TIMEOUT = 5.0
MONITOR_BATCH_WINDOW = 0.002
"""Seconds caproto's server waits for more monitor updates before sending a batch (its default
is 10 ms, tuned for floods of updates). An instrument IOC sends a handful per move, and
EpicsMotor waits for DMOV: 2 ms takes a zero-length move's put-to-DMOV from about 14 ms to 5 ms
(benchmarks/bench_ioc.py). ``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC`` still overrides it."""


def ca_environment(
    interfaces: Sequence[str], port: int | None = None, environ: dict[str, str] | None = None
) -> dict[str, str]:
    """The EPICS variables the server needs for these interfaces (set only where unset).

    Loopback-only interfaces also get loopback beacons, so nothing is broadcast on the LAN.
    """
    env = os.environ if environ is None else environ
    changes: dict[str, str] = {"EPICS_CAS_INTF_ADDR_LIST": " ".join(interfaces)}
    if port is not None:
        changes["EPICS_CA_SERVER_PORT"] = str(port)
    if all(_is_loopback(i) for i in interfaces):
        defaults = {
            "EPICS_CAS_BEACON_ADDR_LIST": " ".join(interfaces),
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        }
        if "EPICS_CA_REPEATER_PORT" in env:
            defaults["EPICS_CAS_BEACON_PORT"] = env["EPICS_CA_REPEATER_PORT"]
        changes.update({k: v for k, v in defaults.items() if k not in env})
    env.update(changes)
    return changes


def _is_loopback(interface: str) -> bool:
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


def check_interfaces(interfaces: Iterable[str]) -> list[str]:
    out = []
    for item in interfaces:
        for part in str(item).replace(",", " ").split():
            try:
                ipaddress.ip_address(part)
            except ValueError:
                raise ConfigError(
                    f"interface {part!r} is not an IP address.",
                    key="--interfaces",
                    fix="give the addresses of this machine's network interfaces, e.g. "
                    "127.0.0.1 (this machine only) or 192.168.1.20 (the lab network); "
                    "0.0.0.0 means every interface.",
                ) from None
            out.append(part)
    if not out:
        raise ConfigError(
            "no interface to serve on.", key="--interfaces", fix="give e.g. 127.0.0.1."
        )
    return out


class _QuietCaproto(logging.Filter):
    """caproto logs a traceback for every refused write and every beacon nobody hears; the IOC
    keeps the message (one line) and drops the repetitions that carry no news."""

    def __init__(self) -> None:
        super().__init__()
        self._beacon_warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Failed to send beacon"):
            if self._beacon_warned:
                return False
            self._beacon_warned = True
            record.msg = (
                "beacons are not received by a CA repeater on this host (harmless: clients "
                "still find the IOC by searching): %s"
            )
            record.args = (msg.split(". ")[0],)
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        if record.exc_info and msg.startswith("Invalid write request"):
            exc = record.exc_info[1]
            record.msg = "write refused: %s"
            record.args = (exc,)
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_caproto_logs() -> None:
    quiet = _QuietCaproto()
    for name in ("caproto", "caproto.ctx", "caproto.circ", "caproto.bcast.beacon"):
        logging.getLogger(name).addFilter(quiet)
    # caproto's own handlers sit on the module loggers; the filter must also see records that
    # propagate from children of these names.
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)


def _server_context_class() -> type:
    """caproto's asyncio server Context, with TCP_NODELAY on every client connection.

    Its accepted sockets keep Nagle's algorithm on: a small monitor update sent right after
    another (DMOV=1 after DMOV=0 of a short move) then waits for the client's delayed ACK,
    about 40 ms on Linux. Measured here: a zero-length move's put-to-DMOV fell from 43 ms to
    a few ms with the option set (benchmarks/bench_ioc.py).
    """
    import socket

    from caproto.asyncio.server import Context

    class NoDelayContext(Context):
        async def tcp_handler(self, client: Any, addr: Any) -> None:
            writer = getattr(client, "writer", None)
            sock = writer.get_extra_info("socket") if writer is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await super().tcp_handler(client, addr)

    return NoDelayContext


async def serve_ioc(
    ioc: LabIOC,
    interfaces: Sequence[str],
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``ioc`` until ``stop`` is set (or SIGINT/SIGTERM), then stop the server."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if "CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC" not in os.environ:
        import caproto.server.common as caproto_server

        # read by caproto's subscription loop at every batch, so setting it here takes effect
        caproto_server.HIGH_LOAD_TIMEOUT = MONITOR_BATCH_WINDOW
    installed: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    await ioc.prime()
    pusher = asyncio.create_task(ioc.pusher.run(), name="daqbridge-ioc-pusher")
    context = _server_context_class()(ioc.pvdb, list(interfaces))
    started = asyncio.Event()

    async def announce(async_lib: Any) -> None:
        started.set()
        if ready is not None:
            where = ", ".join(f"{i}:{context.port}" for i in interfaces)
            ready(
                f"{READY}: prefix {ioc.prefix} on {where} ({len(ioc.pvdb)} records, "
                f"{len(ioc.pv_names())} PVs, {len(ioc.kinds)} devices)"
            )

    server = asyncio.create_task(context.run(startup_hook=announce), name="daqbridge-ioc")
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            server.result()  # raises why the server stopped on its own
    finally:
        for task in (waiter, server, pusher):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            await asyncio.wait_for(
                asyncio.gather(server, pusher, return_exceptions=True), SERVER_STOP_TIMEOUT
            )
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(
    profile: str | Path | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    interfaces: Sequence[str] = ("127.0.0.1",),
    port: int | None = None,
    poll_period: float = DEFAULT_POLL_PERIOD,
    read_only: bool = False,
    write_from: Sequence[str] | None = None,
    list_pvs: bool = False,
    all_fields: bool = True,
    connect_timeout: float | None = None,
    out: Callable[[str], None] | None = None,
) -> int:
    """``daqbridge ioc serve``: start the lab, serve it (or list its PVs), shut down in order."""
    from daqbridge.runtime import Runtime

    out = out or _print
    interfaces = check_interfaces(interfaces)
    if port is not None and not 0 < port < 65536:
        raise ConfigError(
            f"port {port} is not a TCP/UDP port number.",
            key="--port",
            fix="give 1-65535; the EPICS default is 5064.",
        )
    check_prefix(prefix)
    if poll_period < 0:
        raise ConfigError(
            f"poll period {poll_period!r} s must be >= 0 (0: no periodic reads).",
            key="--poll-period",
            fix="give seconds, e.g. 1.0.",
        )
    if not list_pvs:
        ca_environment(interfaces, port)
        quiet_caproto_logs()
    runtime = Runtime.from_profile(profile, sigint="pause", connect_timeout=connect_timeout)
    ioc: LabIOC | None = None
    try:
        ioc = LabIOC.from_runtime(
            runtime,
            prefix=prefix,
            poll_period=poll_period,
            read_only=read_only,
            write_from=write_from,
        )
        for device_id, why in ioc.skipped.items():
            log.warning("not served: %s (%s)", device_id, why)
        if list_pvs:
            for name in ioc.pv_names() if all_fields else ioc.record_names():
                out(name)
            return 0
        asyncio.run(serve_ioc(ioc, interfaces, ready=out))
        return 0
    finally:
        if ioc is not None:
            ioc.close()
        report = runtime.close(reason="ioc shutdown")
        if not report.clean:
            print(report.format(), file=sys.stderr)


def _print(line: str) -> None:
    print(line, flush=True)
