"""Shared helpers of the simulator tests: real pyserial ports on sim:// URLs and real ptys."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import serial

import daqbridge.sim as dsim

SILENCE = 0.05
"""Seconds a read waits to prove the device said nothing (set commands are silent)."""


class FakeClock:
    """A clock tests advance by hand, for exact motion profiles with no real waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(autouse=True)
def _forget_named_simulators() -> Iterator[None]:
    """Named instances are process-global: drop the ones a test registered."""
    before = set(dsim.registered_names())
    yield
    for name in set(dsim.registered_names()) - before:
        dsim.unregister(name)


@pytest.fixture
def open_url() -> Iterator[Callable[..., serial.SerialBase]]:
    """Open ``sim://`` URLs with pyserial; every port is closed after the test."""
    ports: list[serial.SerialBase] = []

    def _open(url: str, **kw) -> serial.SerialBase:
        kw.setdefault("timeout", 1.0)
        port = serial.serial_for_url(url, **kw)
        ports.append(port)
        return port

    yield _open
    for port in ports:
        port.close()


@pytest.fixture
def open_tty() -> Iterator[Callable[..., serial.Serial]]:
    """Open a pty path with plain pyserial, as a driver would; closed after the test."""
    ports: list[serial.Serial] = []

    def _open(path: str | os.PathLike[str], baudrate: int, **kw) -> serial.Serial:
        kw.setdefault("timeout", 1.0)
        port = serial.Serial(os.fspath(path), baudrate, **kw)
        ports.append(port)
        return port

    yield _open
    for port in ports:
        port.close()


class Wire:
    """Byte-level helpers for talking to a port in tests (exposed as the ``wire`` fixture)."""

    @staticmethod
    def query(port: serial.SerialBase, command: bytes, terminator: bytes = b"\r\n") -> bytes:
        """Write one command and read one terminated reply (empty if the read timed out)."""
        port.write(command)
        return port.read_until(terminator)

    @staticmethod
    def silent(port: serial.SerialBase, wait: float = SILENCE) -> bool:
        """True if nothing arrives within ``wait`` seconds."""
        old = port.timeout
        port.timeout = wait
        try:
            return port.read(1) == b""
        finally:
            port.timeout = old

    @classmethod
    def transcript(
        cls,
        port: serial.SerialBase,
        exchanges: list[tuple[bytes, bytes | None]],
        terminator: bytes = b"\r\n",
    ) -> None:
        """Check exact (sent, replied) byte pairs; ``None`` means the device must stay silent."""
        for sent, expected in exchanges:
            port.write(sent)
            if expected is None:
                assert cls.silent(port), f"{sent!r} must be silent"
            else:
                got = port.read_until(terminator)
                assert got == expected, f"{sent!r}: expected {expected!r}, got {got!r}"


@pytest.fixture
def wire() -> type[Wire]:
    return Wire


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@contextlib.contextmanager
def _sim_serve(*args: str) -> Iterator[tuple[str, str]]:
    """``daqbridge sim serve ARGS`` as a real process: yields (kind, address) from its ready line,
    then stops it with SIGINT and checks that it exits 0 (Ctrl-C is its normal end)."""
    argv = [sys.executable, "-m", "daqbridge", "sim", "serve", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "daqbridge sim serve printed no ready line"
        kind, _, address = proc.stdout.readline().strip().partition(" ready on ")
        yield kind, address
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err


@pytest.fixture
def sim_serve() -> Callable[..., contextlib.AbstractContextManager[tuple[str, str]]]:
    return _sim_serve
