"""Serve a simulator on a real pseudo-terminal, so anything that opens a tty can talk to it.

The driver opens the slave side like a USB adapter (``/dev/pts/N``, reached through a stable
symlink); one pump thread per pty moves bytes between the master side and the simulator. The pump
sleeps in ``select`` on the master fd, a wake-up pipe, and a timeout bounded by the simulator's next
scheduled event, so a reply goes out the moment it is due without polling: a query round trip costs
about what a bare pty does (~100-200 us).

Unplug closes the master: the driver's next read or write fails exactly as with a vanished USB
adapter, and the symlink disappears as ``/dev/serial/by-id/...`` does. Replug makes a NEW pty and
points the symlink at it; a driver must reopen the port, as on real hardware.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shutil
import tempfile
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daqbridge.errors import ConfigError, PortUnavailable
from daqbridge.sim._core import SerialSimulator
from daqbridge.sim._registry import create_simulator, lookup, register, unregister

log = logging.getLogger(__name__)

_MAX_BACKLOG = 1 << 20
"""Bytes kept for a driver that is not reading; a real UART would drop them, so do we, beyond."""
_JOIN_TIMEOUT = 2.0


class _Session:
    """One pty pair and the thread pumping it; replaced wholesale on replug."""

    def __init__(self, server: PtyServer) -> None:
        self.server = server
        self.sim = server.simulator
        self.master, self.slave = os.openpty()
        try:
            # Raw before anyone opens the slave: a fresh pty echoes and translates CR/LF, which
            # would feed the driver its own commands back. Keeping our slave fd open also stops
            # the master from reporting EIO while no driver has the port open.
            tty.setraw(self.slave)
            self.device = os.ttyname(self.slave)
            os.set_blocking(self.master, False)
            self.wake_r, self.wake_w = os.pipe()
        except BaseException:
            os.close(self.master)
            os.close(self.slave)
            raise
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.stopping = False
        self.selecting = False
        self.backlog = bytearray()
        self.thread = threading.Thread(
            target=self._pump, name=f"sim-pty-{self.sim.kind}-{self.device}", daemon=True
        )
        self.sim.add_output_listener(self._wake)
        self.thread.start()

    def _wake(self) -> None:
        # Called under the simulator lock by whichever thread produced output; only needed when
        # the pump is (about to be) asleep in select, so its own writes cost no syscall.
        if self.selecting or self.stopping:
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"!")

    def _flush(self) -> None:
        while self.backlog:
            try:
                n = os.write(self.master, self.backlog)
            except BlockingIOError:
                if len(self.backlog) > _MAX_BACKLOG:
                    dropped = len(self.backlog) - _MAX_BACKLOG
                    del self.backlog[:dropped]
                    self.server.dropped_bytes += dropped
                return
            except OSError:
                self.backlog.clear()
                return
            del self.backlog[:n]

    def _pump(self) -> None:
        sim = self.sim
        while not self.stopping:
            try:
                self.selecting = True
                self.backlog += sim.read_to_host()
                self._flush()
                due = sim.next_due()
                timeout = None if due is None else max(0.0, due - sim.clock())
                wlist = [self.master] if self.backlog else []
                readable, _, _ = select.select([self.master, self.wake_r], wlist, [], timeout)
                self.selecting = False
                if self.wake_r in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                if self.master in readable:
                    try:
                        data = os.read(self.master, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError as exc:
                        if not self.stopping:  # pty torn down under us: nothing left to pump
                            self.server.errors.append(exc)
                        break
                    if data:
                        sim.write_from_host(data)
            except Exception as exc:  # a simulator bug must not silently kill the port
                self.selecting = False
                if self.stopping:
                    break
                log.exception("simulator %s on %s failed", sim.kind, self.device)
                self.server.errors.append(exc)
                if isinstance(exc, OSError) and exc.errno in (errno.EBADF, errno.EIO):
                    break

    def stop(self) -> None:
        self.stopping = True
        self.sim.remove_output_listener(self._wake)
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"!")
        if self.thread is not threading.current_thread():
            self.thread.join(_JOIN_TIMEOUT)
            if self.thread.is_alive():  # pragma: no cover - would be a pump bug
                log.error(
                    "simulator pump on %s did not stop within %.1f s", self.device, _JOIN_TIMEOUT
                )
        for fd in (self.master, self.slave, self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyServer:
    """A simulator reachable as a serial port at ``path``; ``str(server)`` is that path."""

    def __init__(
        self,
        simulator: SerialSimulator,
        *,
        link: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.simulator = simulator
        self.errors: list[BaseException] = []
        """Exceptions raised by the simulator inside the pump (tests assert it stays empty)."""
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._tmpdir: str | None = None
        if link is None:
            self._tmpdir = tempfile.mkdtemp(prefix="daqbridge-sim-")
            link_path = Path(self._tmpdir) / simulator.kind
        else:
            link_path = Path(link).expanduser().absolute()
            if link_path.exists() and not link_path.is_symlink():
                raise ConfigError(
                    f"cannot create the simulator link {link_path}: a file that is not a symlink "
                    "is there.",
                    key="link",
                    fix="choose another --link path or remove that file.",
                )
            if not link_path.parent.is_dir():
                raise ConfigError(
                    f"cannot create the simulator link {link_path}: directory "
                    f"{link_path.parent} does not exist.",
                    key="link",
                    fix="create the directory first or choose another --link path.",
                )
        self.link = link_path
        self._name = name
        self._session: _Session | None = None
        self._closed = False
        if name is not None:
            register(name, simulator)
        try:
            self._plug()
        except BaseException:
            if name is not None:
                unregister(name)
            raise

    # --- pty lifecycle --------------------------------------------------------------------------

    def _plug(self) -> None:
        session = _Session(self)
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(session.device, tmp)
            os.replace(tmp, self.link)  # atomic: a driver never sees a missing or half link
        except BaseException:
            session.stop()
            raise
        self._session = session

    def _unplug_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(FileNotFoundError):
                if self.link.is_symlink() and os.readlink(self.link) == session.device:
                    self.link.unlink()
            session.stop()

    @property
    def path(self) -> str:
        """The stable path drivers open (a symlink to the current pty)."""
        return str(self.link)

    @property
    def device(self) -> str | None:
        """The real ``/dev/pts/N`` behind the link, or None while unplugged."""
        s = self._session
        return s.device if s else None

    @property
    def plugged(self) -> bool:
        return self._session is not None

    def unplug(self) -> None:
        """Pull the cable: the driver's next I/O fails, the path vanishes, the device goes deaf."""
        with self._lock:
            self._check_open()
            self.simulator.unplug()
            self._unplug_session()

    def replug(self) -> None:
        """Plug back in: a new pty behind the same path; drivers must reopen, as on hardware."""
        with self._lock:
            self._check_open()
            if self._session is None:
                self._plug()
            self.simulator.replug()

    def close(self) -> None:
        """Stop the pump and remove the pty and the link. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._unplug_session()
            if self._name is not None and lookup(self._name, None) is self.simulator:
                unregister(self._name)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise PortUnavailable(
                self.path,
                f"the {self.simulator.kind} simulator's pty server is closed",
                fix="start a new server with serve_pty().",
            )

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        state = "closed" if self._closed else (self.device or "unplugged")
        return f"<PtyServer {self.simulator.kind} at {self.path} ({state})>"

    def __enter__(self) -> PtyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serve_pty(
    kind_or_simulator: str | SerialSimulator,
    *,
    link: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **options: Any,
) -> Iterator[PtyServer]:
    """Serve a simulator (given, or built from ``kind`` and ``options``) on a pseudo-terminal.

    ``link`` is the path drivers open (default: a symlink in a fresh temporary directory).
    ``name`` also registers the simulator for :func:`lookup` while the server runs.
    """
    if isinstance(kind_or_simulator, SerialSimulator):
        if options:
            raise ConfigError(
                f"options {sorted(options)} only apply when serve_pty builds the simulator from a "
                "kind; this one already exists.",
                fix="set them on the simulator (sim.faults...) or pass a kind name instead.",
            )
        sim = kind_or_simulator
    else:
        sim = create_simulator(kind_or_simulator, **options)
    server = PtyServer(sim, link=link, name=name)
    try:
        yield server
    finally:
        server.close()
