"""Real pseudo-terminals with device-side threads, and the test-only Elliptec bus router."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from daqbridge.transport import SerialPortPool


class PtyPeer:
    """The device end of a pty: a thread that answers each request line via ``handler``.

    ``handler(line) -> bytes | None`` gets the line without its terminator and returns the raw
    bytes to send back (or None for silence). ``link``: a symlink kept pointing at the pty, as
    /dev/serial/by-id does; ``unplug()`` closes the master (the driver's I/O fails with EIO) and
    removes the link, a new PtyPeer on the same link is the replug.
    """

    def __init__(
        self,
        handler: Callable[[bytes], bytes | None] | None = None,
        *,
        terminator: bytes = b"\n",
        link: Path | None = None,
        splitter: Callable[[bytearray], list[bytes]] | None = None,
    ) -> None:
        self.handler = handler or (lambda line: b"R" + line + b"\n")
        self.terminator = terminator
        self.splitter = splitter
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # raw before pyserial opens it: no echo of our own replies
        self.device = os.ttyname(self.slave)
        self.link = link
        if link is not None:
            tmp = link.with_name(link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self.device, tmp)
            os.replace(tmp, link)
        self.path = str(link) if link is not None else self.device
        self.received: list[bytes] = []
        self._write_lock = threading.Lock()
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name=f"pty-peer {self.device}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray()
        while not self._stop:
            try:
                ready, _, _ = select.select([self.master, self._wake_r], [], [], 0.5)
            except (OSError, ValueError):
                return
            if self._stop:
                return
            if self.master not in ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            if self.splitter is not None:
                lines = self.splitter(buf)
            else:
                lines = []
                while True:
                    i = buf.find(self.terminator)
                    if i < 0:
                        break
                    lines.append(bytes(buf[:i]))
                    del buf[: i + len(self.terminator)]
            for line in lines:
                self.received.append(line)
                reply = self.handler(line)
                if reply:
                    self.send(reply)

    def send(self, data: bytes) -> None:
        """Bytes the device sends on its own (late or unsolicited packets, stale junk)."""
        with self._write_lock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    select.select([], [self.master], [], 0.1)
                    continue
                view = view[n:]

    def unplug(self) -> None:
        if self._stop:
            return  # idempotent: closing the fds twice could close someone else's
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(self.link) == self.device:
                    self.link.unlink()

    close = unplug


@pytest.fixture
def make_peer():
    peers: list[PtyPeer] = []

    def make(*args, **kwargs) -> PtyPeer:
        peer = PtyPeer(*args, **kwargs)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def peer(make_peer) -> PtyPeer:
    """A pty whose device answers every line ``X`` with ``RX`` (tagged by the request)."""
    return make_peer()


@pytest.fixture
def pool():
    p = SerialPortPool()
    yield p
    p.close_all()


@pytest.fixture
def io_jobs():
    """``io_jobs(port, on_submit=None) -> list``: from the call on, every job handed to the
    port's I/O thread is recorded (its function), and ``on_submit()`` runs after each hand-over,
    so a peer can hold its reply until a wait really is on the thread. Undone at teardown.

    What the async-lease tests count: a call that never waits must not leave the event loop,
    and one that waits must cost one hand-over, not more.
    """
    workers = []

    def count(port, on_submit: Callable[[], object] | None = None) -> list:
        worker = port._io_worker()
        jobs: list = []
        submit = worker.submit

        def counting(fn, *args, **kwargs):
            jobs.append(fn)
            future = submit(fn, *args, **kwargs)
            if on_submit is not None:
                on_submit()
            return future

        worker.submit = counting
        workers.append(worker)
        return jobs

    yield count
    for worker in workers:
        worker.__dict__.pop("submit", None)


# --- Elliptec (test-only helper: the real router belongs to the device family) -----------------

_HEX = frozenset(b"0123456789ABCDEFabcdef")


class ElliptecRouter:
    """Device packets: ``<addr hex char><2 upper-case letters><data>\\r\\n``."""

    def split(self, buffer: bytearray) -> list[bytes]:
        packets = []
        while True:
            # skip separators and junk up to a plausible packet start
            start = 0
            while start < len(buffer) and not _is_start(buffer, start):
                start += 1
            if start:
                del buffer[:start]
            end = buffer.find(b"\r\n")
            if end < 0:
                return packets
            packet = bytes(buffer[:end])
            del buffer[: end + 2]
            if len(packet) >= 3:
                packets.append(packet)

    def address_of(self, packet: bytes) -> str:
        return chr(packet[0]).upper()

    def kind_of(self, packet: bytes) -> str:
        return packet[1:3].decode("ascii")


def _is_start(buf: bytearray, i: int) -> bool:
    if buf[i] not in _HEX:
        return False
    rest = buf[i + 1 : i + 3]
    if len(rest) < 2:
        return len(rest) == 0 or 65 <= rest[0] <= 90  # maybe a packet still arriving
    return 65 <= rest[0] <= 90 and 65 <= rest[1] <= 90


def split_host_packets(buf: bytearray) -> list[bytes]:
    """Device side: host packets ``<addr><2 lower-case letters>[8 hex for ma]``, CR/LF tolerated."""
    out = []
    while True:
        while buf[:1] in (b"\r", b"\n"):
            del buf[:1]
        if len(buf) < 3:
            return out
        need = 3 + (8 if bytes(buf[1:3]) in (b"ma", b"mr") else 0)
        if len(buf) < need:
            return out
        out.append(bytes(buf[:need]))
        del buf[:need]


@pytest.fixture
def elliptec_router() -> ElliptecRouter:
    return ElliptecRouter()


@pytest.fixture
def host_splitter():
    return split_host_packets
