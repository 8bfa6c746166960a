"""Shared fixtures for native device tests: real ports, real RunEngine, validated documents."""

from __future__ import annotations

import os
import select
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

import daqbridge.sim as sim
from daqbridge.transport import SerialPortPool, VisaSessionManager
from tests.devices.fake_pyvcam_support import fake_pyvcam


@pytest.fixture
def serial_pool() -> Iterator[SerialPortPool]:
    """A fresh pool, every port closed at the end."""
    pool = SerialPortPool()
    try:
        yield pool
    finally:
        pool.close_all()


@pytest.fixture
def visa_manager() -> Iterator[VisaSessionManager]:
    """A fresh VISA manager (1 s I/O timeout), every session closed at the end."""
    manager = VisaSessionManager(timeout=1.0, lease_timeout=5.0)
    try:
        yield manager
    finally:
        manager.close_all()


@pytest.fixture
def pvc() -> Iterator[ModuleType]:
    """The fake ``pyvcam`` importable as ``pyvcam``; yields its ``pvc`` (``pvc.sdk``,
    ``pvc.calls``), the path and modules restored afterwards."""
    with fake_pyvcam() as fake:
        yield fake


@pytest.fixture
def sim_name() -> Iterator[Callable[[str], str]]:
    """Unique names for ``sim://KIND?name=X`` simulators, unregistered at the end."""
    names: list[str] = []

    def make(prefix: str = "sim") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        names.append(name)
        return name

    yield make
    for name in names:
        sim.unregister(name)


class DocumentLog:
    """RunEngine subscriber keeping (name, doc) pairs; ``validate()`` checks every schema."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.items.append((name, doc))

    def __len__(self) -> int:
        return len(self.items)

    def validate(self) -> None:
        assert self.items, "no documents were emitted"
        for name, doc in self.items:
            schema_validators[DocumentNames(name)].validate(doc)

    def of(self, name: str) -> list[dict]:
        return [doc for n, doc in self.items if n == name]

    def events(self) -> list[dict]:
        return self.of("event")


def stop_run_engine(engine: RunEngine, timeout: float = 5.0) -> None:
    """Halt ``engine`` if it is not idle, then stop its event-loop thread and close its loop.

    bluesky starts a ``bluesky-run-engine`` thread per RunEngine and never stops it (the
    runtime stops its own, ``Runtime._stop_run_engine_loop``): a RunEngine per test left one
    thread, plus the loop's executor threads, behind for the rest of the session (281 threads
    by the time tests/devices/test_scpi.py counted them)."""
    import asyncio

    if engine.state != "idle":
        engine.halt()
    loop = engine.loop
    if loop.is_closed():
        return
    if loop.is_running():
        done = asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop)
        done.result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        engine._th.join(timeout)
        assert not engine._th.is_alive(), "the RunEngine's event loop did not stop"
    loop.close()


@pytest.fixture
def RE() -> Iterator[RunEngine]:  # noqa: N802 - bluesky's own spelling
    engine = RunEngine({}, context_managers=[])
    yield engine
    stop_run_engine(engine)


@pytest.fixture
def docs(RE: RunEngine) -> DocumentLog:  # noqa: N803
    log = DocumentLog()
    RE.subscribe(log)
    return log


class TranscriptPeer:
    """The far end of a real pty, answering lines from a script: a stand-in for exact replies.

    ``replies`` maps a received line (terminator stripped) to the bytes sent back, or to None
    (silent). Lines not in the map are recorded and get no answer. Used for reply formats the
    simulators do not produce (``+12.345``, CR LF from a meter) and for wrong instruments.
    """

    def __init__(self, replies: dict[str, bytes | None], *, terminator: bytes = b"\n") -> None:
        self.replies = dict(replies)
        self.terminator = terminator
        self.received: list[str] = []
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="transcript-peer")
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready = select.select([self.master], [], [], 0.05)[0]
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            buf += data
            while self.terminator in buf:
                line, buf = buf.split(self.terminator, 1)
                text = line.decode("ascii", "replace").strip()
                self.received.append(text)
                reply = self.replies.get(text)
                if reply is not None:
                    os.write(self.master, reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def transcript() -> Iterator[Callable[..., TranscriptPeer]]:
    peers: list[TranscriptPeer] = []

    def make(replies: dict[str, bytes | None], **kw) -> TranscriptPeer:
        peer = TranscriptPeer(replies, **kw)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def _wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., object]:
    """``wait_until(predicate, timeout=5.0)``: poll until true or the (bounded) timeout; returns
    the predicate's last value."""
    return _wait_until
