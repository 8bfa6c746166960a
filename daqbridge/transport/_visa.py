"""VISA sessions: one ResourceManager per backend, one session per instrument, leased per resource.

pyvisa is not thread-safe per instrument: two threads querying one session interleave a write and
a read and each gets the other's answer. Serialising *all* VISA traffic would be the easy fix and
the wrong one: a lab reads a DMM and a source meter at the same time. So each resource gets its own
:class:`~daqbridge.transport._lease.LeaseLock` (rank 20 by default, above serial ports),
and only traffic to the same resource waits.

VISA's own exclusive lock guards against *other processes*; it is offered where the backend
implements it (VXI-11, HiSLIP, NI-VISA) and refused with a clear message elsewhere (pyvisa-sim,
pyvisa-py SOCKET/ASRL), because in-process serialisation applies regardless.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyvisa
from pyvisa import constants as vc
from pyvisa.errors import VisaIOError

from daqbridge.errors import (
    InstrumentTimeout,
    PortUnavailable,
    ResourceError,
    SettingsConflict,
    ValueRejected,
)
from daqbridge.transport._lease import (
    LeaseLock,
    actor_record,
    check_owner,
    check_timeout,
)

log = logging.getLogger(__name__)

VISA_RANK = 20
"""Default rank of VISA sessions: taken after serial ports (10) when both are needed."""

_NO_LOCKS = (int(vc.VI_ERROR_NSUP_OPER), int(vc.VI_ERROR_INV_LOCK_TYPE))


def normalise_backend(backend: str) -> str:
    """``'@py'``, ``'@sim'``, ``'@ivi'`` as is; ``'defs.yaml@sim'`` with an absolute path."""
    if not isinstance(backend, str) or "@" not in backend:
        raise ResourceError(
            f"VISA backend must look like '@py', '@sim', '<file.yaml>@sim' or '@ivi', "
            f"got {backend!r}.",
            fix="use '@py' (pyvisa-py), '@ivi' (NI/Keysight VISA) or '<definitions>.yaml@sim'.",
        )
    path, _, lib = backend.rpartition("@")
    if path:
        path = os.path.abspath(os.path.expanduser(path))
    return f"{path}@{lib}"


class VisaLease:
    """Exclusive use of one VISA resource for a multi-command transaction."""

    __slots__ = ("session", "owner", "_timeout", "_record", "_active")

    def __init__(self, session: VisaSession, owner: str, timeout: float) -> None:
        self.session = session
        self.owner = owner
        self._timeout = timeout
        self._record: list | None = None
        self._active = False

    def __enter__(self) -> VisaLease:
        record = self._record = actor_record()
        self.session._lock.acquire(self.owner, self._timeout, record)
        self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._active = False
        self.session._lock.release(self._record)

    def _check(self) -> VisaSession:
        if not self._active:
            raise ResourceError(
                f"VISA lease of {self.owner!r} used outside its with-block.",
                resource=self.session.resource,
                fix="do all I/O inside `with session.lease(...) as lease:`.",
            )
        return self.session

    def query(self, cmd: str, timeout: float | None = None) -> str:
        s = self._check()
        return s._io("query", cmd, timeout)

    def write(self, cmd: str) -> None:
        s = self._check()
        s._io("write", cmd, None)

    def read(self, timeout: float | None = None) -> str:
        s = self._check()
        return s._io("read", None, timeout)


class VisaSession:
    """One open VISA instrument, shared by every caller that names its resource."""

    def __init__(
        self,
        manager: VisaSessionManager,
        resource: str,
        backend: str,
        instrument: Any,
        *,
        settings: dict[str, Any],
        rank: int,
        timeout: float,
        lease_timeout: float,
    ) -> None:
        self.resource = resource
        self.backend = backend
        self.resource_name = getattr(instrument, "resource_name", resource)
        self._manager = manager
        self._inst = instrument
        self._settings = settings
        self.rank = rank
        label = resource if backend == "@py" else f"{resource} ({backend})"
        self._lock = LeaseLock(label, rank)
        self.label = label
        self.timeout = timeout
        self.lease_timeout = lease_timeout
        self._io_timeout_ms: float = instrument.timeout
        self._identity: str | None = None
        self._lost = False
        self.reopens = 0
        self._out_of_step = False
        """A reply timed out: its late answer may still arrive and must not become the next
        query's reply. The next query resynchronises first (see :meth:`_resync`)."""
        self._closed = False
        self.queries = 0
        self.stale_discarded = 0
        self.writes = 0
        self.reads = 0
        self.errors = 0

    def __repr__(self) -> str:
        return f"<VisaSession {self.label!r} rank={self.rank}>"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def lease(self, owner: str, timeout: float | None = None) -> VisaLease:
        """Context manager: exclusive use for a multi-command transaction (waits <= timeout)."""
        check_owner(owner, self.label)
        wait = (
            self.lease_timeout
            if timeout is None
            else check_timeout(timeout, "lease timeout", self.label)
        )
        return VisaLease(self, owner, wait)

    def _auto_owner(self) -> str:
        return threading.current_thread().name

    def query(self, cmd: str, timeout: float | None = None) -> str:
        """Write ``cmd`` and read the reply (terminator stripped), as one leased transaction."""
        with self.lease(self._auto_owner()) as lease:
            return lease.query(cmd, timeout)

    def write(self, cmd: str) -> None:
        with self.lease(self._auto_owner()) as lease:
            lease.write(cmd)

    def read(self, timeout: float | None = None) -> str:
        with self.lease(self._auto_owner()) as lease:
            return lease.read(timeout)

    def identity(self, *, refresh: bool = False, timeout: float | None = None) -> str:
        """The instrument's ``*IDN?`` reply, asked once and cached."""
        if self._identity is None or refresh:
            self._identity = self.query("*IDN?", timeout).strip()
        return self._identity

    @contextlib.contextmanager
    def lock_exclusive(self, timeout: float = 5.0) -> Iterator[VisaSession]:
        """Hold VISA's exclusive lock (keeps *other processes* out) for the with-block.

        Raises :class:`ResourceError` on backends without VISA locks. In-process callers are
        serialised by leases either way; this lock does not replace them.
        """
        timeout = check_timeout(timeout, "VISA lock timeout", self.label)
        with self.lease("visa exclusive lock", timeout):  # pyvisa calls are not thread-safe
            try:
                self._inst.lock_excl(timeout=max(1, int(timeout * 1000)))
            except NotImplementedError:
                raise self._no_locks("this backend does not implement VISA locks") from None
            except VisaIOError as exc:
                if exc.error_code in _NO_LOCKS:
                    raise self._no_locks(f"the backend refuses locks here ({exc})") from None
                if exc.error_code == vc.VI_ERROR_TMO:
                    raise ResourceError(
                        f"VISA exclusive lock not granted within {timeout:.3f} s: another "
                        "process holds it.",
                        resource=self.label,
                        fix="find the other program using this instrument, or wait longer.",
                    ) from None
                raise self._visa_error("lock_excl", None, exc) from None
        try:
            yield self
        finally:
            with self.lease("visa exclusive lock", max(timeout, self.lease_timeout)):
                try:
                    self._inst.unlock()
                except Exception as exc:  # noqa: BLE001 - report, but do not mask the body's error
                    log.warning("unlocking %s failed: %s", self.label, exc)

    def _no_locks(self, why: str) -> ResourceError:
        return ResourceError(
            f"cannot take a VISA exclusive lock on {self.resource}: {why}. VISA locks exist only "
            "on some interfaces and backends (VXI-11 and HiSLIP in pyvisa-py, most interfaces in "
            "NI/Keysight VISA); pyvisa-sim and pyvisa-py SOCKET/ASRL resources have none. "
            "In-process serialisation (leases) still applies.",
            resource=self.label,
            fix="drop lock_exclusive for this resource (other processes are then not kept out), "
            "or use a backend/interface that supports VISA locks.",
        )

    def stats(self) -> dict[str, Any]:
        snap = self._lock.snapshot()
        return {
            "resource": self.resource,
            "backend": self.backend,
            "rank": self.rank,
            "identity": self._identity,
            "queries": self.queries,
            "writes": self.writes,
            "reads": self.reads,
            "errors": self.errors,
            "transactions": snap["leases"],
            "wait": snap["wait"],
            "hold": snap["hold"],
            "holder": snap["holder"],
            "held_for": snap["held_for"],
            "waiters": snap["waiters"],
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._lock.close(
            ResourceError(
                "VISA session closed (shutdown).",
                resource=self.label,
                fix="open it again from the VisaSessionManager.",
            )
        )
        try:
            self._inst.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing %s failed: %s", self.label, exc)

    # --- I/O (caller holds the lease) ----------------------------------------------------------

    def _check_cmd(self, cmd: object) -> str:
        if not isinstance(cmd, str):
            raise ValueRejected(
                f"VISA command must be a str, got {type(cmd).__name__} {cmd!r}.",
                value=cmd,
                resource=self.label,
                fix="pass text, e.g. 'MEAS:VOLT?'.",
            )
        term = self._settings["write_termination"]
        if term and term in cmd:
            raise ValueRejected(
                f"command {cmd!r} contains the write terminator {term!r}: it would be sent as "
                "two commands.",
                value=cmd,
                resource=self.label,
                fix="send one command per call; never build commands from unchecked input.",
            )
        return cmd

    def _io(self, op: str, cmd: str | None, timeout: float | None) -> Any:
        try:
            return self._io_once(op, cmd, timeout)
        except PortUnavailable:
            if not self._lost or self._closed:
                raise
        # The connection was found dead on this call: open a new one and try once more (an
        # instrument that restarted its network stack answers again; one that is gone fails
        # the reopen with a clear PortUnavailable).
        return self._io_once(op, cmd, timeout)

    def _io_once(self, op: str, cmd: str | None, timeout: float | None) -> Any:
        if self._closed:
            raise ResourceError("VISA session is closed.", resource=self.label)
        if cmd is not None:
            self._check_cmd(cmd)
        t = self.timeout if timeout is None else check_timeout(timeout, "timeout", self.label)
        ms = max(1, int(math.ceil(t * 1000)))
        if self._lost:
            self._reopen(t)
        inst = self._inst
        try:
            if ms != self._io_timeout_ms:
                inst.timeout = ms
                self._io_timeout_ms = ms
            if op == "query":
                if self._out_of_step:
                    self._resync(inst, t)
                self.queries += 1
                reply = inst.query(cmd)
                if reply.strip() == cmd.strip():
                    # An instrument (or a terminal server) left in echo mode sends the command
                    # back before its reply: the echo is not the answer.
                    reply = inst.read()
                return reply
            if op == "write":
                self.writes += 1
                inst.write(cmd)
                return None
            self.reads += 1
            return inst.read()
        except VisaIOError as exc:
            self.errors += 1
            if exc.error_code == vc.VI_ERROR_TMO:
                if op != "write":
                    self._out_of_step = True
                raise InstrumentTimeout(
                    f"no reply to {cmd!r} within {t:.3f} s" if cmd else f"no data within {t:.3f} s",
                    resource=self.label,
                    fix="check that the command is a query (ends in '?') the instrument knows, "
                    "its terminators, and the timeout.",
                ) from None
            # Anything but a timeout may mean a dead connection; reopening is cheap and safe.
            self._lost = True
            raise self._visa_error(op, cmd, exc) from None
        except (OSError, ConnectionError) as exc:
            self.errors += 1
            # The instrument dropped the connection (power cycle, network): the next call opens
            # a new one instead of failing on the dead socket forever.
            self._lost = True
            raise PortUnavailable(
                self.label, f"connection failed during {op} {cmd!r}: {exc}"
            ) from None

    def _reopen(self, t: float) -> None:
        """Open the resource again after a lost connection (one attempt per call)."""
        with contextlib.suppress(Exception):
            self._inst.close()
        manager = self._manager
        with manager._lock:
            rm = manager._rm_locked(self.backend)
            self._inst = manager._open_locked(rm, self.backend, self.resource, self._settings, t)
        self._io_timeout_ms = self._inst.timeout
        self._lost = False
        self._out_of_step = False
        self.reopens += 1
        log.info("VISA resource %s reopened after a lost connection", self.label)

    def _resync(self, inst: Any, t: float) -> None:
        """Get back in step after a timeout, before the next query.

        Replies come back in order, so a reply that arrived late sits in front of the next one:
        read as the next query's answer, it would be a plausible, silently wrong value. Ask
        ``*IDN?`` and discard every line until its answer (known from the identity cache, or
        shaped like one: four comma-separated fields); then the stream is in step again.
        """
        expected = self._identity
        inst.write("*IDN?")
        deadline = time.monotonic() + 2 * t
        discarded = 0
        while True:
            line = inst.read().strip()
            if (expected and line == expected) or (not expected and line.count(",") == 3):
                break
            discarded += 1
            if time.monotonic() > deadline or discarded > 64:
                raise InstrumentTimeout(
                    f"could not resynchronise after a timeout: {discarded} unexpected lines, "
                    f"last {line!r}",
                    resource=self.label,
                    fix="check the instrument (echo mode, a stuck output queue); *CLS or a "
                    "device clear may help.",
                )
        self.stale_discarded += discarded
        self._out_of_step = False

    def _visa_error(self, op: str, cmd: str | None, exc: BaseException) -> ResourceError:
        return ResourceError(
            f"VISA {op}{' ' + repr(cmd) if cmd else ''} failed: {exc}",
            resource=self.label,
            fix="check the connection and the instrument's state (SYST:ERR?).",
        )


class VisaSessionManager:
    """One pyvisa ResourceManager per backend and one :class:`VisaSession` per resource."""

    def __init__(self, *, timeout: float = 2.0, lease_timeout: float = 10.0) -> None:
        self.timeout = check_timeout(timeout, "VISA timeout", "VISA")
        self.lease_timeout = check_timeout(lease_timeout, "lease timeout", "VISA")
        self._lock = threading.Lock()
        self._managers: dict[str, Any] = {}
        self._sessions: dict[tuple[str, str], VisaSession] = {}

    def __enter__(self) -> VisaSessionManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_all()

    def resource_manager(self, backend: str = "@py") -> Any:
        """The pyvisa ResourceManager of ``backend`` (opened once)."""
        backend = normalise_backend(backend)
        with self._lock:
            return self._rm_locked(backend)

    def _rm_locked(self, backend: str) -> Any:
        rm = self._managers.get(backend)
        if rm is None:
            try:
                rm = pyvisa.ResourceManager(backend)
            except Exception as exc:  # noqa: BLE001 - pyvisa raises ValueError/OSError/...
                raise ResourceError(
                    f"cannot load VISA backend {backend!r}: {exc}".split("\n")[0],
                    resource=backend,
                    fix="'@py' needs pyvisa-py, '@sim' pyvisa-sim (and a readable YAML file for "
                    "'<file>@sim'), '@ivi' a vendor VISA library (NI-VISA, Keysight IO "
                    "Libraries).",
                ) from None
            self._managers[backend] = rm
        return rm

    def list_resources(self, backend: str = "@py", query: str = "?*::INSTR") -> tuple[str, ...]:
        rm = self.resource_manager(backend)
        try:
            return tuple(rm.list_resources(query))
        except Exception as exc:  # noqa: BLE001
            raise ResourceError(
                f"listing VISA resources on {backend} failed: {exc}",
                resource=backend,
            ) from None

    def session(
        self,
        resource: str,
        *,
        backend: str = "@py",
        read_termination: str = "\n",
        write_termination: str = "\n",
        timeout: float | None = None,
        rank: int = VISA_RANK,
        lease_timeout: float | None = None,
    ) -> VisaSession:
        """The shared session of ``resource`` on ``backend``, opened on first use.

        ``timeout`` (s) is the default I/O timeout; a different one can be given per query.
        Opening it again with other terminators or rank raises :class:`SettingsConflict`.
        """
        if not isinstance(resource, str) or "::" not in resource:
            raise ResourceError(
                f"not a VISA resource name: {resource!r}.",
                fix="use e.g. 'TCPIP0::192.168.1.100::INSTR', 'GPIB0::20::INSTR', 'ASRL1::INSTR'.",
            )
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ResourceError(f"rank must be an int, got {rank!r}.", resource=resource)
        backend = normalise_backend(backend)
        io_timeout = (
            self.timeout if timeout is None else check_timeout(timeout, "timeout", resource)
        )
        wait = (
            self.lease_timeout
            if lease_timeout is None
            else check_timeout(lease_timeout, "lease timeout", resource)
        )
        settings = {
            "read_termination": read_termination,
            "write_termination": write_termination,
            "rank": rank,
        }
        with self._lock:
            session = self._sessions.get((backend, resource))
            if session is not None and session._closed:
                self._forget_locked(session)
                session = None
            if session is not None:
                existing = {**session._settings, "rank": session.rank}
                if existing != settings:
                    raise SettingsConflict(session.label, existing, settings)
                return session
            rm = self._rm_locked(backend)
            inst = self._open_locked(rm, backend, resource, settings, io_timeout)
            # The same instrument under a second spelling ('TCPIP0::h::INSTR' and
            # 'TCPIP0::h::inst0::INSTR') must be the same session, or pyvisa sees two users.
            canonical = (backend, inst.resource_name)
            session = self._sessions.get(canonical)
            if session is not None and not session._closed:
                inst.close()
                existing = {**session._settings, "rank": session.rank}
                if existing != settings:
                    raise SettingsConflict(session.label, existing, settings)
            else:
                session = VisaSession(
                    self,
                    resource,
                    backend,
                    inst,
                    settings={k: v for k, v in settings.items() if k != "rank"},
                    rank=rank,
                    timeout=io_timeout,
                    lease_timeout=wait,
                )
                self._sessions[canonical] = session
            self._sessions[(backend, resource)] = session
            return session

    def _open_locked(
        self, rm: Any, backend: str, resource: str, settings: dict, timeout: float
    ) -> Any:
        if backend.endswith("@sim"):
            # pyvisa-sim opens any well-formed name and then times out on every query; a name
            # that is not in the definitions file is a configuration mistake, say so now.
            try:
                known = {rm.resource_info(r).resource_name for r in rm.list_resources("?*")}
                wanted = rm.resource_info(resource).resource_name
            except Exception:  # noqa: BLE001 - fall through to the open attempt
                known, wanted = set(), None
            if wanted is not None and wanted not in known:
                raise PortUnavailable(
                    resource,
                    f"not defined in the simulation file of {backend}",
                    fix=f"add it to the 'resources' section of the YAML file; defined: "
                    f"{', '.join(sorted(known)) or 'none'}.",
                )
        try:
            return rm.open_resource(
                resource,
                read_termination=settings["read_termination"],
                write_termination=settings["write_termination"],
                timeout=max(1, int(math.ceil(timeout * 1000))),
            )
        except Exception as exc:  # noqa: BLE001 - VisaIOError, SerialException, OSError, ValueError
            raise PortUnavailable(
                resource,
                f"cannot open VISA resource on {backend}: {exc}",
                fix="check the resource name (`daqbridge hardware` lists resources), cabling and "
                "that the instrument is on.",
            ) from None

    @property
    def sessions(self) -> dict[str, VisaSession]:
        """Open sessions by their label (resource, plus backend when not '@py')."""
        with self._lock:
            return {s.label: s for s in set(self._sessions.values()) if not s._closed}

    def status(self) -> dict[str, dict[str, Any]]:
        return {label: s.stats() for label, s in self.sessions.items()}

    def close_all(self) -> None:
        with self._lock:
            sessions = set(self._sessions.values())
            managers = list(self._managers.values())
            self._sessions.clear()
            self._managers.clear()
        for s in sessions:
            s.close()
        for rm in managers:
            try:
                rm.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("closing VISA resource manager failed: %s", exc)

    def _forget_locked(self, session: VisaSession) -> None:
        for key in [k for k, s in self._sessions.items() if s is session]:
            del self._sessions[key]


_default_manager: VisaSessionManager | None = None
_default_lock = threading.Lock()


def default_visa_manager() -> VisaSessionManager:
    """The process-wide VISA manager used when none is passed explicitly."""
    global _default_manager
    with _default_lock:
        if _default_manager is None:
            _default_manager = VisaSessionManager()
        return _default_manager
