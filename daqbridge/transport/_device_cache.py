"""What hardware is there: serial ports and VISA resources, enumerated once and cached.

Config validation asks "does this port exist?" for every instrument of a profile, and the
`daqbridge hardware` command prints everything with identities. Enumeration is slow (pyvisa-py
spends about a second on network discovery; asking *IDN? of each instrument costs a round trip
each), so results are cached until someone asks for a refresh.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from serial.tools import list_ports

from daqbridge.errors import DaqbridgeError
from daqbridge.transport._serial import SerialPortPool, canonical_name, is_url
from daqbridge.transport._visa import VisaSessionManager, normalise_backend

_ALIAS_DIRS = ("/dev/serial/by-id", "/dev/serial/by-path")


@dataclass(frozen=True)
class SerialPortInfo:
    """One serial port as the OS (or the profile, or the pool) knows it."""

    device: str
    description: str = ""
    hwid: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    aliases: tuple[str, ...] = ()
    source: str = "system"
    """'system' (listed by the OS), 'configured' (given to the cache), 'open' (in the pool)."""
    in_use: bool = False
    """Open in this process's pool."""


@dataclass(frozen=True)
class VisaResourceInfo:
    resource: str
    backend: str
    identity: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _alias_map() -> dict[str, list[str]]:
    aliases: dict[str, list[str]] = {}
    for d in _ALIAS_DIRS:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            link = os.path.join(d, n)
            aliases.setdefault(os.path.realpath(link), []).append(link)
    return aliases


class DeviceCache:
    """Cached enumeration of serial ports and VISA resources.

    ``pool`` and ``visa`` add what this process has open (pseudo-terminals and URLs never show
    up in the OS listing); ``extra_ports`` adds paths from a profile.
    """

    def __init__(
        self,
        *,
        pool: SerialPortPool | None = None,
        visa: VisaSessionManager | None = None,
        extra_ports: Iterable[str] = (),
        visa_backends: Iterable[str] = ("@py",),
        identify_timeout: float = 1.0,
    ) -> None:
        self._pool = pool
        self._visa = visa
        self._own_visa: VisaSessionManager | None = None
        self._extra = list(extra_ports)
        self._backends = [normalise_backend(b) for b in visa_backends]
        self._identify_timeout = identify_timeout
        self._lock = threading.Lock()
        self._serial: list[SerialPortInfo] | None = None
        self._visa_list: list[VisaResourceInfo] | None = None
        self._identities: dict[tuple[str, str], tuple[str | None, str | None]] = {}

    def add_port(self, path: str) -> None:
        """Remember a port the OS does not list (a pty, a URL from the profile)."""
        with self._lock:
            if path not in self._extra:
                self._extra.append(path)
            self._serial = None

    def refresh(self) -> None:
        """Forget everything; the next call enumerates again."""
        with self._lock:
            self._serial = None
            self._visa_list = None
            self._identities.clear()

    # --- serial ---------------------------------------------------------------------------------

    def serial_ports(self, refresh: bool = False) -> list[SerialPortInfo]:
        with self._lock:
            if self._serial is None or refresh:
                self._serial = self._enumerate_serial()
            return list(self._serial)

    def _enumerate_serial(self) -> list[SerialPortInfo]:
        aliases = _alias_map()
        open_ports = dict(self._pool.ports) if self._pool is not None else {}
        seen: dict[str, SerialPortInfo] = {}
        for p in list_ports.comports():
            real = canonical_name(p.device)
            seen[real] = SerialPortInfo(
                device=p.device,
                description=p.description or "",
                hwid=p.hwid or "",
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
                manufacturer=p.manufacturer,
                product=p.product,
                aliases=tuple(aliases.get(real, ())),
                source="system",
                in_use=real in open_ports,
            )
        for path in self._extra:
            real = canonical_name(path)
            if real in seen or not self._exists_now(path):
                continue
            names = tuple(a for a in [path, *aliases.get(real, ())] if a != real)
            seen[real] = SerialPortInfo(
                device=real,
                description="configured",
                aliases=names,
                source="configured",
                in_use=real in open_ports,
            )
        for real, port in open_ports.items():
            if real in seen:
                continue
            seen[real] = SerialPortInfo(
                device=real,
                description="open in this process",
                aliases=tuple(sorted(a for a in port.aliases if a != real)),
                source="open",
                in_use=True,
            )
        return sorted(seen.values(), key=lambda i: i.device)

    # --- VISA -----------------------------------------------------------------------------------

    def _manager(self) -> VisaSessionManager:
        if self._visa is not None:
            return self._visa
        if self._own_visa is None:
            self._own_visa = VisaSessionManager(timeout=self._identify_timeout)
        return self._own_visa

    def visa_resources(
        self, refresh: bool = False, identify: bool = False
    ) -> list[VisaResourceInfo]:
        """VISA resources of the configured backends; with ``identify``, their *IDN? too."""
        with self._lock:
            if self._visa_list is None or refresh:
                self._visa_list = self._enumerate_visa()
                if refresh:
                    self._identities.clear()
            listing = list(self._visa_list)
        if not identify:
            return listing
        out = []
        for info in listing:
            if info.error is not None and info.resource == "":
                out.append(info)
                continue
            key = (info.backend, info.resource)
            if key not in self._identities:
                self._identities[key] = self._identify(info.backend, info.resource)
            ident, err = self._identities[key]
            out.append(VisaResourceInfo(info.resource, info.backend, ident, err))
        return out

    def _enumerate_visa(self) -> list[VisaResourceInfo]:
        found: list[VisaResourceInfo] = []
        mgr = self._manager()
        for backend in self._backends:
            try:
                names = mgr.list_resources(backend, "?*")
            except DaqbridgeError as exc:
                found.append(VisaResourceInfo("", backend, error=exc.what))
                continue
            found.extend(VisaResourceInfo(n, backend) for n in names)
        return found

    def _identify(self, backend: str, resource: str) -> tuple[str | None, str | None]:
        try:
            session = self._manager().session(
                resource, backend=backend, timeout=self._identify_timeout
            )
            return session.identity(timeout=self._identify_timeout), None
        except DaqbridgeError as exc:
            return None, exc.what
        except Exception as exc:  # noqa: BLE001 - one odd instrument must not break the listing
            return None, f"{type(exc).__name__}: {exc}"

    # --- lookups --------------------------------------------------------------------------------

    def exists(self, port_or_url: str) -> bool:
        """True if the port/URL/VISA resource can be expected to open.

        URLs (``socket://``, ``loop://``, ``sim://`` ...) count as existing: only opening them
        tells. Device paths are checked on disk (a dangling symlink does not exist). VISA names
        are looked up in the cached listing and in open sessions.
        """
        if not isinstance(port_or_url, str) or not port_or_url:
            return False
        if is_url(port_or_url):
            return True
        if "::" in port_or_url:
            if self._visa is not None and any(
                s.resource == port_or_url or s.resource_name == port_or_url
                for s in self._visa.sessions.values()
            ):
                return True
            return any(i.resource == port_or_url for i in self.visa_resources())
        return self._exists_now(port_or_url)

    @staticmethod
    def _exists_now(path: str) -> bool:
        return is_url(path) or os.path.exists(path)

    def describe(self, *, identify: bool = False) -> str:
        """A text table of everything found, for `daqbridge hardware`."""
        lines = ["Serial ports"]
        ports = self.serial_ports()
        if ports:
            rows = [("DEVICE", "DESCRIPTION", "VID:PID", "SERIAL", "ALIASES", "IN USE")]
            for p in ports:
                vidpid = (
                    f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else "-"
                )
                rows.append(
                    (
                        p.device,
                        p.description or "-",
                        vidpid,
                        p.serial_number or "-",
                        ", ".join(p.aliases) or "-",
                        "yes" if p.in_use else "no",
                    )
                )
            lines += _table(rows)
        else:
            lines.append("  (none found)")
        lines.append("")
        lines.append("VISA resources")
        resources = self.visa_resources(identify=identify)
        if resources:
            rows = [("RESOURCE", "BACKEND", "IDENTITY" if identify else "NOTE")]
            for r in resources:
                note = r.identity or (f"error: {r.error}" if r.error else "-")
                rows.append((r.resource or "-", r.backend, note))
            lines += _table(rows)
        else:
            lines.append("  (none found)")
        return "\n".join(lines)

    def close(self) -> None:
        if self._own_visa is not None:
            self._own_visa.close_all()
            self._own_visa = None


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
