"""Rules that need the whole profile: ids, shared hardware, data directories, simulation wiring.

They run before any port is opened, so a port claimed twice or a camera writing into the
catalog's own directory is reported at the desk, with the file, the key and the fix, instead of
as interleaved bytes or a corrupt catalog in the middle of the night.

Hardware sharing rule (the precise one, also in docs/profile.md): every physical port, VISA
resource, camera and PV is claimed by exactly one enabled ``[[instruments]]`` entry. Running two
drivers on one instrument is done with ONE entry and ``stack = "shadow"``; the devices of one
Elliptec bus are listed in ONE entry (one bus driver must own every address, or replies are
stolen). ``pty`` and ``sim-tcp`` are never shared: each entry gets its own simulator.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from daqbridge.config._models import (
    LEGACY_DRIVERS,
    SIM_PORT,
    SIM_TCP_RESOURCE,
    ElliptecInstrument,
    InstrumentBase,
    MaiTaiInstrument,
    Newport1830cInstrument,
    Profile,
    PvcamInstrument,
    ScpiInstrument,
    SerialInstrument,
    is_url_port,
)
from daqbridge.errors import ConfigError

Severity = Literal["error", "warning"]

RULES: dict[str, tuple[Severity, str]] = {
    "toml-syntax": ("error", "The file is not valid TOML; reported at line:column."),
    "nesting": (
        "error",
        "Arrays or tables nested deeper than any profile key (16 levels); reported, not a crash.",
    ),
    "unknown-key": ("error", "A key the table does not have; the nearest known key is suggested."),
    "missing-key": ("error", "A required key or table is absent."),
    "unknown-driver": ("error", "`driver` is not one of the known drivers (nearest suggested)."),
    "schema": ("error", 'A value of the wrong type (`"19200"` for 19200, ...).'),
    "value": ("error", "A value outside its range, or inconsistent within one table."),
    "duplicate-id": (
        "error",
        "Two devices get the same id, counting derived ids (`<id>_<axis>`, `<id>_<name>`, "
        "`<id>_legacy`).",
    ),
    "port-shared": ("error", "Two entries claim one port, VISA resource, camera or PV."),
    "stack-conflict": (
        "error",
        "One instrument is declared in two entries on different stacks; use one `shadow` entry.",
    ),
    "bus-split": ("error", "One Elliptec bus is split over two entries; list all addresses once."),
    "port-missing": ("error", "A serial port does not exist (only with a device cache)."),
    "port-unchecked": ("warning", "The device cache could not answer for a port."),
    "simulation-off": (
        "error",
        "Simulated hardware in a profile with `[simulation] enabled = false`.",
    ),
    "simulators-not-started": (
        "error",
        "`pty` or `sim-tcp` with `start_simulators = false`: nobody would serve them.",
    ),
    "sim-kind": ("error", "A `sim://KIND` URL or `sim.kind` that does not match the driver."),
    "sim-addresses": ("error", "`sim.addresses` on an instrument that is not an Elliptec bus."),
    "sim-ignored": ("warning", "A `sim` table on real hardware."),
    "sim-absent-address": ("warning", "An Elliptec address with no device on the simulated bus."),
    "frames-dir-shared": ("error", "Two cameras write into the same directory tree."),
    "frames-dir-reserved": (
        "error",
        "Camera frames inside the catalog's or write-ahead log's dirs.",
    ),
    "data-dir": ("error", "The data directory cannot be resolved (no home directory for `~`)."),
    "data-dir-unwritable": (
        "error",
        "The data directory (or a camera's frames directory) is not a directory, cannot be "
        "created, or is not writable; checked on this machine, with the ports.",
    ),
    "coupling-unknown": ("error", "A coupling names an id that is not an instrument."),
    "coupling-kind": ("error", "A power coupling not from a maitai to a newport1830c."),
    "coupling-real": ("error", "A coupling on real hardware (couplings join simulators)."),
    "coupling-duplicate": ("error", "A meter follows two lasers."),
    "coupling-disabled": ("warning", "A coupling with a disabled end; ignored."),
    "no-instruments": ("warning", "The profile has no instruments."),
    "stacks-off": ("warning", "Both stacks are switched off."),
    "stack-off": ("warning", "An instrument's stack is switched off; it (or its twin) won't run."),
    "polling-ignored": (
        "warning",
        "`polling_rate_hz` on an instrument no legacy driver can run (on a native instrument "
        "that has one it is kept for a switch back, and not reported).",
    ),
    "api-key-unused": ("warning", "`catalog_api_key` without `catalog_uri`."),
    "api-key-in-file": ("warning", "An API key written in the file instead of `env:NAME`."),
    # Checked before start (daqbridge.config._preflight), by the runtime and by
    # `config check`: what the lab needs from the network and this machine.
    "catalog-unreachable": (
        "error",
        "The Tiled server of `catalog_uri` refuses the connection, does not accept it within "
        "2 s, or does not answer (network check).",
    ),
    "catalog-not-tiled": (
        "error",
        "`catalog_uri` answers, but not as a Tiled server (network check).",
    ),
    "api-key-missing": (
        "error",
        "The Tiled server requires an API key and `catalog_api_key` gives none, or names an "
        "environment variable that is not set (network check).",
    ),
    "api-key-refused": ("error", "The Tiled server refuses the API key (network check)."),
    "catalog-dir-unwritable": (
        "error",
        "The directory of a `sqlite:///` `catalog_uri` is not writable or cannot be created.",
    ),
    "sdk-missing": (
        "error",
        "A package a native instrument's backend imports is missing: `pyvcam` for a PVCAM "
        "camera on the real SDK, `pyvisa-py` or `pyvisa-sim` for a VISA backend.",
    ),
}
"""Every rule: severity and a one-line description (docs/profile.md is generated from it)."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a profile: where (file, key), what, and how to fix it."""

    severity: Severity
    rule: str
    """Short name of the rule (``duplicate-id``, ``port-shared`` ...), stable for tests and docs."""
    what: str
    fix: str
    key: str | None = None
    """Key path in the TOML, e.g. ``instruments[2].port``."""
    file: str | None = None
    instrument: str | None = None
    resource: str | None = None
    line: int | None = None
    """Line of the key in the file, when known (best effort)."""

    @property
    def where(self) -> str | None:
        """``file:line`` (or just the file) for messages."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file

    def error(self) -> ConfigError:
        return ConfigError(
            self.what,
            file=self.where,
            key=self.key,
            fix=self.fix,
            instrument=self.instrument,
            resource=self.resource,
        )

    def __str__(self) -> str:
        return str(self.error())


_SHOWN = 20  # a message a person reads; `daqbridge config check` prints all of them


class ProfileInvalid(ConfigError):
    """A profile has one or more errors. ``issues`` lists all of them, not only the first."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        first = self.issues[0]
        if len(self.issues) == 1:
            super().__init__(
                first.what,
                file=first.where,
                key=first.key,
                fix=first.fix,
                instrument=first.instrument,
                resource=first.resource,
            )
            return
        lines = [f"{len(self.issues)} problems in the profile:"]
        shown = self.issues[:_SHOWN]
        for n, issue in enumerate(shown, 1):
            where = f"{issue.key}: " if issue.key else ""
            if issue.line:
                where = f"line {issue.line}, {where}"
            lines.append(f"  {n}. {where}{issue.what} Fix: {issue.fix}")
        if len(self.issues) > _SHOWN:
            lines.append(f"  ... and {len(self.issues) - _SHOWN} more (see .issues).")
        super().__init__(
            "\n".join(lines) + "\n",
            file=first.file,
            fix="correct each key listed above (`daqbridge config check FILE` lists them again).",
        )


def sentence(text: str) -> str:
    """Messages end with a full stop, so joined parts read as sentences."""
    text = text.strip()
    return text if not text or text.endswith((".", "?", "!", ":")) else text + "."


@runtime_checkable
class PortChecker(Protocol):
    """What validation needs from ``daqbridge.transport.DeviceCache``."""

    def exists(self, port: str) -> bool: ...


class PathExists:
    """A port checker for when no DeviceCache is at hand: the device path exists."""

    def exists(self, port: str) -> bool:
        return os.path.exists(port)


def raise_for_issues(issues: Sequence[Issue]) -> list[Issue]:
    """Raise ProfileInvalid if any issue is an error; return the warnings."""
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise ProfileInvalid(errors)
    return [i for i in issues if i.severity == "warning"]


# --- the rules ----------------------------------------------------------------------------------


class _Checker:
    def __init__(self, profile: Profile, device_cache: PortChecker | None) -> None:
        self.profile = profile
        self.cache = device_cache
        self.file = profile.label
        self.issues: list[Issue] = []

    def add(
        self,
        severity: Severity,
        rule: str,
        what: str,
        fix: str,
        key: str | None,
        inst: InstrumentBase | None = None,
        resource: str | None = None,
    ) -> None:
        self.issues.append(
            Issue(
                severity,
                rule,
                sentence(what),
                sentence(fix),
                key=key,
                file=self.file,
                instrument=inst.id if inst is not None else None,
                resource=resource if resource is not None else (inst.hardware if inst else None),
            )
        )

    def active(self, inst: InstrumentBase) -> bool:
        """Will the runtime start at least one driver of this entry?"""
        stacks = self.profile.stacks
        return inst.enabled and (
            (inst.runs_native and stacks.native) or (inst.runs_legacy and stacks.legacy)
        )

    def run(self) -> list[Issue]:
        self.duplicate_ids()
        self.shared_hardware()
        self.ports_exist()
        self.simulation()
        self.data_dirs()
        self.couplings()
        self.stacks()
        self.lab()
        return self.issues

    # --- ids ------------------------------------------------------------------------------

    def duplicate_ids(self) -> None:
        seen: dict[str, tuple[str, str]] = {}
        for i, inst in self.profile.iter_instruments():
            part_keys = self._part_keys(i, inst)
            if inst.id in seen:  # its derived ids collide too: one message is enough
                other_key, other_label = seen[inst.id]
                self.add(
                    "error",
                    "duplicate-id",
                    f"instrument id {inst.id!r} is used twice: by {other_label} at {other_key} "
                    f"and by instruments[{i}].",
                    "rename one of them: every id must be unique after axes and bus devices "
                    "are expanded to <instrument id>_<name> (and shadow twins to <id>_legacy).",
                    f"instruments[{i}].id",
                    inst,
                )
                continue
            for ref in inst.devices():
                if ref.part is None:
                    key, label = f"instruments[{i}].id", f"instrument {inst.id!r}"
                else:
                    key = part_keys.get(ref.part, f"instruments[{i}]")
                    label = f"{ref.part!r} of {inst.id!r} (<instrument id>_<name>)"
                if ref.id != inst.id and ref.id.endswith("_legacy") and inst.stack == "shadow":
                    label += ", legacy twin of a shadow instrument"
                if ref.id in seen:
                    other_key, other_label = seen[ref.id]
                    self.add(
                        "error",
                        "duplicate-id",
                        f"device id {ref.id!r} is used twice: by {other_label} at {other_key} "
                        f"and by {label}.",
                        "rename one of them: every id must be unique after axes and bus devices "
                        "are expanded to <instrument id>_<name> (and shadow twins to <id>_legacy).",
                        key,
                        inst,
                    )
                else:
                    seen[ref.id] = (key, label)

    @staticmethod
    def _part_keys(i: int, inst: InstrumentBase) -> dict[str, str]:
        if isinstance(inst, ElliptecInstrument):
            return {
                a.device_name: f"instruments[{i}].elliptec.addresses[{j}].name"
                for j, a in enumerate(inst.elliptec.addresses)
            }
        if inst.driver == "esp300":
            return {
                ax.name: f"instruments[{i}].esp300.axes[{j}].name"
                for j, ax in enumerate(inst.esp300.axes)  # type: ignore[attr-defined]
            }
        return {}

    # --- hardware -------------------------------------------------------------------------

    def hardware_identity(self, inst: InstrumentBase) -> str | None:
        """What identifies the physical hardware, or None when it is never shared."""
        if isinstance(inst, SerialInstrument):
            return self.canonical_port(inst.port)
        if isinstance(inst, ScpiInstrument):
            if inst.resource == SIM_TCP_RESOURCE:
                return None
            return canonical_visa(inst.resource, self.canonical_port)
        if isinstance(inst, PvcamInstrument):
            return f"camera:{inst.pvcam.backend}:{inst.camera.lower()}"
        if inst.driver == "epics":
            return f"pv:{inst.prefix}{inst.epics.read_pv}"  # type: ignore[attr-defined]
        return None

    def canonical_port(self, port: str) -> str | None:
        if port == SIM_PORT:
            return None
        if is_url_port(port):
            return canonical_url(port)
        canon = getattr(self.cache, "canonical", None)
        if callable(canon):
            try:
                return f"serial:{canon(port)}"
            except Exception:  # the cache's own error; fall back to the OS view
                pass
        try:
            return f"serial:{os.path.realpath(port)}"
        except (OSError, ValueError):
            return f"serial:{port}"

    def shared_hardware(self) -> None:
        groups: dict[str, list[tuple[int, InstrumentBase]]] = {}
        for i, inst in self.profile.iter_instruments():
            if not inst.enabled:
                continue  # a disabled entry may describe alternative hardware on the same port
            ident = self.hardware_identity(inst)
            if ident is not None:
                groups.setdefault(ident, []).append((i, inst))
        for claims in groups.values():
            (i0, first), *rest = claims
            for i, inst in rest:
                self._shared(i0, first, i, inst)

    def _shared(self, i0: int, first: InstrumentBase, i: int, inst: InstrumentBase) -> None:
        key = f"instruments[{i}].{inst.hardware_key}"
        where = f"{first.hardware_key} {inst.hardware!r}"
        stacks = {first.stack, inst.stack}
        if first.driver == inst.driver and "shadow" in stacks and len(stacks) > 1:
            shadow, i_s, other, i_o = (
                (first, i0, inst, i) if first.stack == "shadow" else (inst, i, first, i0)
            )
            twin = f"legacy twin {shadow.id}_legacy" if other.stack == "legacy" else "native device"
            self.add(
                "error",
                "stack-conflict",
                f"the {inst.driver} on {where} already runs in both stacks as shadow instrument "
                f"{shadow.id!r} (instruments[{i_s}]); instruments[{i_o}] ({other.id!r}, "
                f"{other.stack}) claims it again.",
                f"remove instruments[{i_o}]: its {other.stack} driver is already the shadow "
                f"entry's {twin}.",
                key,
                inst,
            )
        elif first.driver == inst.driver and stacks == {"native", "legacy"}:
            self.add(
                "error",
                "stack-conflict",
                f"the same {inst.driver} on {where} is declared in both stacks: "
                f"{first.stack} in instruments[{i0}] ({first.id!r}) and {inst.stack} in "
                f"instruments[{i}] ({inst.id!r}).",
                'keep one entry and set stack = "shadow" to run the native and the legacy '
                "driver side by side on it, or remove one entry.",
                key,
                inst,
            )
        elif first.driver == inst.driver == "elliptec":
            self.add(
                "error",
                "bus-split",
                f"the Elliptec bus on {where} is split over instruments[{i0}] ({first.id!r}) "
                f"and instruments[{i}] ({inst.id!r}).",
                "one bus driver must own every address on a port (it routes each reply by "
                "address): list all devices in one entry's elliptec.addresses.",
                key,
                inst,
            )
        else:
            self.add(
                "error",
                "port-shared",
                f"{where} is claimed by instruments[{i0}] ({first.id!r}, {first.driver}) and "
                f"instruments[{i}] ({inst.id!r}, {inst.driver}).",
                "each port, VISA resource and camera belongs to one entry: correct the "
                f"{inst.hardware_key} of one of them. To run two drivers on one instrument use "
                'one entry with stack = "shadow".',
                key,
                inst,
            )

    def ports_exist(self) -> None:
        if self.cache is None:
            return
        for i, inst in self.profile.iter_instruments():
            if not self.active(inst):
                continue
            if isinstance(inst, SerialInstrument):
                port, key = inst.port, f"instruments[{i}].port"
            elif isinstance(inst, ScpiInstrument) and inst.resource.upper().startswith("ASRL/"):
                port, key = inst.resource[4:].split("::", 1)[0], f"instruments[{i}].resource"
            else:
                continue
            if port == SIM_PORT or is_url_port(port):
                continue
            try:
                present = bool(self.cache.exists(port))
            except Exception as exc:  # a broken enumeration must not hide the other checks
                self.add(
                    "warning",
                    "port-unchecked",
                    f"could not check that {port} exists: {type(exc).__name__}: {exc}",
                    "run `daqbridge hardware` to see what the machine can enumerate.",
                    key,
                    inst,
                )
                continue
            if not present:
                self.add(
                    "error",
                    "port-missing",
                    f"port {port} does not exist on this machine.",
                    "check the cable and power and the path (`daqbridge hardware` lists the "
                    "ports; prefer /dev/serial/by-id/... names, which survive re-plugging), or "
                    "set enabled = false for an instrument that is not connected today.",
                    key,
                    inst,
                    resource=port,
                )

    # --- simulation -----------------------------------------------------------------------

    def simulation(self) -> None:
        sim = self.profile.simulation
        for i, inst in self.profile.iter_instruments():
            if not inst.enabled:
                continue
            hw_key = f"instruments[{i}].{inst.hardware_key}"
            if isinstance(inst, PvcamInstrument):
                hw_key = f"instruments[{i}].pvcam.backend"
            if inst.simulated and not sim.enabled:
                self.add(
                    "error",
                    "simulation-off",
                    f"{inst.id!r} uses simulated hardware ({self._sim_what(inst)}) but "
                    "[simulation] enabled = false.",
                    "set enabled = true in [simulation] for a simulated lab, or give the real "
                    f"{inst.hardware_key}.",
                    hw_key,
                    inst,
                )
            needs_start = inst.hardware in (SIM_PORT, SIM_TCP_RESOURCE)
            if needs_start and sim.enabled and not sim.start_simulators:
                self.add(
                    "error",
                    "simulators-not-started",
                    f"{inst.id!r} asks the runtime to serve a simulator ({inst.hardware!r}) but "
                    "[simulation] start_simulators = false.",
                    "set start_simulators = true, or point the entry at the running simulator "
                    "(sim://KIND?name=NAME, or its pty path / TCPIP0::127.0.0.1::PORT::SOCKET).",
                    hw_key,
                    inst,
                )
            self._sim_table(i, inst)

    @staticmethod
    def _sim_what(inst: InstrumentBase) -> str:
        if isinstance(inst, PvcamInstrument):
            return "pvcam.backend = 'sim'"
        if isinstance(inst, ScpiInstrument) and inst.resource != SIM_TCP_RESOURCE:
            return f"visa_backend {inst.visa_backend!r}"
        return f"{inst.hardware_key} {inst.hardware!r}"

    def _sim_table(self, i: int, inst: InstrumentBase) -> None:
        table = getattr(inst, "sim", None)
        url_kind = None
        if isinstance(inst, SerialInstrument) and inst.port.lower().startswith("sim://"):
            url_kind = urlsplit(inst.port).hostname or ""
            if url_kind != inst.driver:
                self.add(
                    "error",
                    "sim-kind",
                    f"port {inst.port!r} names the {url_kind or '(empty)'} simulator but the "
                    f"driver is {inst.driver!r}.",
                    f"write sim://{inst.driver}?name={inst.id} (the URL's host is the "
                    "simulator kind).",
                    f"instruments[{i}].port",
                    inst,
                )
        if table is None:
            return
        key = f"instruments[{i}].sim"
        if not inst.simulated:
            self.add(
                "warning",
                "sim-ignored",
                f"{inst.id!r} has a sim table but real hardware ({inst.hardware!r}); it is "
                "ignored.",
                "remove the sim table, or use a simulated port (pty, sim://...) or 'sim-tcp'.",
                key,
                inst,
            )
        if table.kind is not None and table.kind != inst.driver:
            self.add(
                "error",
                "sim-kind",
                f"sim.kind {table.kind!r} does not simulate driver {inst.driver!r}.",
                f"remove sim.kind (it defaults to {inst.driver!r}) or correct the driver.",
                f"{key}.kind",
                inst,
            )
        if table.addresses is not None:
            if not isinstance(inst, ElliptecInstrument):
                self.add(
                    "error",
                    "sim-addresses",
                    f"sim.addresses only applies to an Elliptec bus, not {inst.driver!r}.",
                    "remove sim.addresses.",
                    f"{key}.addresses",
                    inst,
                )
            else:
                simulated = {f"{a:X}" for a in table.addresses}
                for j, a in enumerate(inst.elliptec.addresses):
                    if a.address not in simulated:
                        self.add(
                            "warning",
                            "sim-absent-address",
                            f"address {a.address} ({inst.id}_{a.device_name}) has no device on "
                            "the simulated bus: it will stay silent.",
                            f"add {int(a.address, 16)} to sim.addresses unless a silent device "
                            "is what you want to test.",
                            f"instruments[{i}].elliptec.addresses[{j}].address",
                            inst,
                        )

    # --- data -----------------------------------------------------------------------------

    def data_dirs(self) -> None:
        try:
            data = self.profile.data_path()
            reserved = self.profile.reserved_dirs()
            cams = [
                (i, inst, self.profile.frames_path(inst))
                for i, inst in self.profile.iter_instruments()
                if isinstance(inst, PvcamInstrument) and inst.enabled
            ]
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. no home directory for ~
            self.add(
                "error",
                "data-dir",
                f"the data directories cannot be resolved: {exc}.",
                "give lab.data_dir and pvcam.frames_dir as absolute paths.",
                "lab.data_dir",
            )
            return
        if self.cache is not None:  # on this machine: the same occasion as the port check
            self.writable_dirs(data, cams)
        for n, (i, inst, path) in enumerate(cams):
            key = f"instruments[{i}].pvcam.frames_dir"
            for r in reserved:
                if _overlap(path, r):
                    self.add(
                        "error",
                        "frames-dir-reserved",
                        f"the frames of {inst.id!r} would go to {path}, which overlaps the "
                        f"catalog's own directory {r}.",
                        "give pvcam.frames_dir a directory of its own (default "
                        f"frames/{inst.id} under data_dir); the catalog and the write-ahead "
                        "log must be the only writers in their directories.",
                        key,
                        inst,
                        resource=str(path),
                    )
                    break
            for i0, other, other_path in cams[:n]:
                if _overlap(path, other_path):
                    self.add(
                        "error",
                        "frames-dir-shared",
                        f"{inst.id!r} and {other.id!r} (instruments[{i0}]) would write frames "
                        f"into the same directory tree ({path} and {other_path}).",
                        "give each camera its own pvcam.frames_dir (one writer per file and "
                        "per directory).",
                        key,
                        inst,
                        resource=str(path),
                    )

    def writable_dirs(self, data: Path, cams: list[tuple[int, PvcamInstrument, Path]]) -> None:
        """The directories start-up writes into, checked before any port opens: a data_dir
        of /dev/null otherwise surfaces as a camera that "cannot write its frames", which
        sends people to the camera's cable."""
        from_env = bool(os.environ.get("DAQBRIDGE_DATA"))
        problem = writable_dir_problem(data)
        if problem is not None:
            source = "DAQBRIDGE_DATA" if from_env else "lab.data_dir"
            self.add(
                "error",
                "data-dir-unwritable",
                f"the data directory {data} (from {source}) {problem}; the catalog, the "
                "write-ahead log and the camera frames go there.",
                "set DAQBRIDGE_DATA to a directory this user can write, or unset it to use "
                "lab.data_dir"
                if from_env
                else "set lab.data_dir to a directory this user can write (it is created if "
                'missing), e.g. data_dir = "~/daqbridge-data".',
                "lab.data_dir",
                resource=str(data),
            )
        for i, inst, path in cams:
            if problem is not None and _overlap(path, data):
                continue  # said once, for the data directory
            cam_problem = writable_dir_problem(path)
            if cam_problem is not None:
                self.add(
                    "error",
                    "data-dir-unwritable",
                    f"the frames directory of {inst.id!r}, {path}, {cam_problem}.",
                    "set pvcam.frames_dir to a directory this user can write (it is created "
                    "if missing), or remove the key to use frames/<id> under data_dir.",
                    f"instruments[{i}].pvcam.frames_dir",
                    inst,
                    resource=str(path),
                )

    # --- couplings ------------------------------------------------------------------------

    def couplings(self) -> None:
        ids = {inst.id: inst for inst in self.profile.instruments}
        sinks: dict[str, int] = {}
        for c, coupling in enumerate(self.profile.couplings):
            for role, want in (("source", MaiTaiInstrument), ("sink", Newport1830cInstrument)):
                name = getattr(coupling, role)
                key = f"couplings[{c}].{role}"
                inst = ids.get(name)
                if inst is None:
                    near = difflib.get_close_matches(name, list(ids), n=1)
                    hint = f"did you mean {near[0]!r}? " if near else ""
                    self.add(
                        "error",
                        "coupling-unknown",
                        f"coupling {role} {name!r} is not an instrument id.",
                        f"{hint}known ids: {', '.join(ids) or 'none'}.",
                        key,
                    )
                elif not isinstance(inst, want):
                    driver = "maitai" if role == "source" else "newport1830c"
                    self.add(
                        "error",
                        "coupling-kind",
                        f"coupling {role} {name!r} is a {inst.driver}; a power coupling goes "
                        "from a maitai to a newport1830c.",
                        f"name a {driver} instrument as {role}.",
                        key,
                        inst,
                    )
                elif not inst.simulated:
                    self.add(
                        "error",
                        "coupling-real",
                        f"coupling {role} {name!r} is real hardware ({inst.hardware!r}); "
                        "couplings join simulators (on a real bench the light does it).",
                        "remove the coupling, or simulate both instruments.",
                        key,
                        inst,
                    )
                elif not inst.enabled:
                    self.add(
                        "warning",
                        "coupling-disabled",
                        f"coupling {role} {name!r} is disabled; the coupling is ignored.",
                        "enable the instrument or remove the coupling.",
                        key,
                        inst,
                    )
            if coupling.sink in sinks:
                self.add(
                    "error",
                    "coupling-duplicate",
                    f"{coupling.sink!r} already follows a source "
                    f"(couplings[{sinks[coupling.sink]}]).",
                    "a meter follows one laser: remove one coupling.",
                    f"couplings[{c}].sink",
                )
            sinks.setdefault(coupling.sink, c)

    # --- stacks and lab -------------------------------------------------------------------

    def stacks(self) -> None:
        stacks = self.profile.stacks
        if not self.profile.instruments:
            self.add(
                "warning",
                "no-instruments",
                "the profile has no [[instruments]]; plans will have no devices.",
                "add [[instruments]] entries (see profiles/lab.example.toml).",
                "instruments",
            )
        if not stacks.native and not stacks.legacy:
            self.add(
                "warning",
                "stacks-off",
                "both stacks are switched off: no instrument will start.",
                "set native = true and/or legacy = true in [stacks].",
                "stacks",
            )
            return
        for i, inst in self.profile.iter_instruments():
            if not inst.enabled:
                continue
            off = [
                s
                for s, runs in (("native", inst.runs_native), ("legacy", inst.runs_legacy))
                if runs and not getattr(stacks, s)
            ]
            if off and not self.active(inst):
                self.add(
                    "warning",
                    "stack-off",
                    f"{inst.id!r} (stack {inst.stack}) will not start: [stacks] {off[0]} = false.",
                    f"switch the {off[0]} stack on, or move the instrument to another stack.",
                    f"instruments[{i}].stack",
                    inst,
                )
            elif off:
                self.add(
                    "warning",
                    "stack-off",
                    f"shadow instrument {inst.id!r} runs only one twin: [stacks] {off[0]} = false.",
                    "switch both stacks on to compare the drivers.",
                    f"instruments[{i}].stack",
                    inst,
                )
            rate = getattr(inst, "polling_rate_hz", None)
            # On an instrument that can go back to its legacy driver, the rate is what a
            # rollback needs: `config switch` keeps it, and it is not worth a warning.
            if rate is not None and inst.driver not in LEGACY_DRIVERS:
                self.add(
                    "warning",
                    "polling-ignored",
                    f"polling_rate_hz is set on {inst.id!r}, which no legacy driver runs: "
                    "native devices are read by plans, not polled.",
                    "remove polling_rate_hz.",
                    f"instruments[{i}].polling_rate_hz",
                    inst,
                )

    def lab(self) -> None:
        lab = self.profile.lab
        if lab.catalog_api_key is not None and lab.catalog_uri is None:
            self.add(
                "warning",
                "api-key-unused",
                "catalog_api_key is set but catalog_uri is not: the embedded catalog needs no key.",
                "set catalog_uri to the Tiled server, or remove catalog_api_key.",
                "lab.catalog_api_key",
            )
        elif lab.catalog_api_key and not lab.catalog_api_key.startswith("env:"):
            self.add(
                "warning",
                "api-key-in-file",
                "catalog_api_key is written in the profile; anyone who can read the file has it.",
                'write catalog_api_key = "env:TILED_API_KEY" and set that variable instead.',
                "lab.catalog_api_key",
            )


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((text for test, text in _KINDS if test(mode)), "not a directory")


def writable_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a directory this process writes into, or None.

    It must be a writable directory, or not exist yet under a writable directory (start-up
    creates it). Nothing is created here: `config check` only looks.
    """
    try:
        if path.is_symlink() and not path.exists():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if path.exists():
            mode = path.stat().st_mode
            if not stat.S_ISDIR(mode):
                return f"is {_kind(mode)}, not a directory"
            if not os.access(path, os.W_OK | os.X_OK):
                return "is a directory this user cannot write to"
            return None
        ancestor = path.parent
        while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        mode = ancestor.stat().st_mode
        if not stat.S_ISDIR(mode):
            return f"cannot be created: {ancestor} is {_kind(mode)}, not a directory"
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return f"does not exist and cannot be created: {ancestor} is not writable for this user"
        return None
    except OSError as exc:
        return f"cannot be checked: {exc.strerror or exc}"


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def canonical_url(url: str) -> str:
    """One spelling per pyserial URL: ``sim://`` instances by name, others lower-cased."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.lower()
    if parts.scheme.lower() == "sim":
        names = parse_qs(parts.query).get("name")
        if names:
            return f"sim:{names[0]}"
        return f"sim://{(parts.hostname or '').lower()}?{parts.query}"
    return url.strip().lower()


_BOARD_RE = re.compile(r"^(TCPIP|GPIB|USB|VXI|PXI|VICP)(\d*)::", re.I)


def canonical_visa(resource: str, canonical_port) -> str:
    """``TCPIP::x::INSTR`` is ``TCPIP0::x::INSTR``; ``ASRL/dev/ttyUSB0::INSTR`` is that port."""
    upper = resource.strip()
    if upper.upper().startswith("ASRL/"):
        port = canonical_port(upper[4:].split("::", 1)[0])
        if port is not None:
            return port
    m = _BOARD_RE.match(upper)
    if m:
        upper = f"{m.group(1)}{m.group(2) or '0'}::{upper[m.end() :]}"
    return f"visa:{upper.upper()}"


def validate_profile(profile: Profile, *, device_cache: PortChecker | None = None) -> list[Issue]:
    """Every issue (errors and warnings) the whole-profile rules find.

    ``device_cache`` is anything with ``exists(port) -> bool`` (the runtime's DeviceCache, or
    :class:`PathExists`); without it port existence is not checked. If it also has
    ``canonical(port) -> str``, that decides which spellings name the same port.
    """
    return _Checker(profile, device_cache).run()


def ensure_valid(profile: Profile, *, device_cache: PortChecker | None = None) -> list[Issue]:
    """Raise ProfileInvalid on errors; return the warnings."""
    return raise_for_issues(validate_profile(profile, device_cache=device_cache))
