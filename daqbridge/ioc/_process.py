"""Start an IOC in its own process and know when it is ready (scripts, tests, benchmarks).

Every wait is bounded and the process is always ended: ``IocProcess.stop()`` asks politely
(SIGINT: the IOC shuts the lab down in order), then kills after a deadline.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from daqbridge.errors import InstrumentTimeout

LOOPBACK_CA = {
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
}
"""Channel Access kept on this machine (STACK_NOTES: caproto / EPICS on loopback)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (CA searches on UDP, serves on TCP, same number)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both TCP and UDP on {host}")


def loopback_ca_env(server_port: int, repeater_port: int) -> dict[str, str]:
    """The CA environment of one loopback IOC and its clients."""
    return {
        **LOOPBACK_CA,
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
        "EPICS_CAS_BEACON_PORT": str(repeater_port),
    }


class IocProcess:
    """A running ``daqbridge ioc serve`` (or any command printing a ready line)."""

    def __init__(self, proc: subprocess.Popen, ready_line: str, stderr_path: str | None) -> None:
        self.proc = proc
        self.ready_line = ready_line
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str] = queue.Queue()
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        if self.stderr_path is None:
            return ""
        with contextlib.suppress(OSError):
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT, wait up to ``timeout`` for the ordered shutdown, then kill."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> IocProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    ready: str,
    timeout: float = 120.0,
    stderr_path: str | None = None,
    cwd: str | None = None,
) -> IocProcess:
    """Start ``args`` and wait (at most ``timeout`` s) for a stdout line starting with ``ready``.

    The process is killed when it does not get ready in time or exits first; the error then
    carries the end of its stderr.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(args),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
        )
    finally:
        if err is not subprocess.DEVNULL:
            err.close()
    handle = IocProcess(proc, "", stderr_path)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.lines.put(line.rstrip("\n"))
        handle.lines.put("")  # EOF marker

    threading.Thread(target=pump, name=f"ioc-stdout-{proc.pid}", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            line = handle.lines.get(timeout=max(0.01, left)) if left > 0 else None
        except queue.Empty:
            line = None
        if line is None:
            handle.stop(timeout=5)
            raise InstrumentTimeout(
                f"{' '.join(args[:4])}... printed no '{ready}' line within {timeout:g} s. "
                f"stderr ends: {handle.stderr_text()[-1500:]}",
                fix="run the command by hand to see why it does not start.",
            )
        if line.startswith(ready):
            handle.ready_line = line
            return handle
        if line == "" and proc.poll() is not None:
            handle.stop(timeout=5)
            raise InstrumentTimeout(
                f"{' '.join(args[:4])}... exited with {proc.returncode} before it was ready. "
                f"stderr ends: {handle.stderr_text()[-1500:]}",
                fix="run the command by hand to see why it does not start.",
            )


def ioc_command(*extra: str) -> list[str]:
    """``python -m daqbridge ioc serve EXTRA...`` with this interpreter."""
    return [sys.executable, "-m", "daqbridge", "ioc", "serve", *extra]
