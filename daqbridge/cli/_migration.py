"""``daqbridge migration status``: where each instrument is on its way from legacy to native.

Per instrument: its stack, how its two drivers have agreed so far, and what changes when it
switches, before anyone switches it. Everything is derived, nothing is a hand-kept table:

* agreement comes from the catalog: the ``shadow_compare`` runs whose start document says the
  instrument was on the shadow stack (``instrument_stacks``, or the older ``instruments``), each
  compared again with the tolerances it recorded (``ShadowReport.from_run``);
* data keys, limits and PVs come from the devices themselves: both drivers of the entry are
  built (never connected) on ``loop://`` in a private port pool, so the lab's hardware, and a lab
  that is running, are not touched; data keys and control limits are what the devices describe,
  PV names follow the IOC's rule (``<id>`` for a positioner, ``<id>:<component>`` otherwise);
* settings come from the same two builds: each stack builds from a watched copy of the entry
  (``_stack_settings.watched``), and a key the entry sets that only one stack's builders read
  (its legacy options, adapter options and limits, or its native driver's arguments) is listed
  for that stack; a rollback needs the legacy-only ones, which stay in the file.

The comparison is always "the legacy driver as ``<id>``" against "the native driver as ``<id>``":
what plans and the catalog see change from when ``<id>`` stops being the legacy driver.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daqbridge.cli._stack_settings import SettingsRead, watched
from daqbridge.errors import CatalogError, ConfigError, DaqbridgeError

PROFILE_ENV = "DAQBRIDGE_PROFILE"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "migration",
        help="where each instrument stands in the move from legacy to native",
        description="Report the migration from the legacy to the native drivers.",
    )
    sub = parser.add_subparsers(dest="migration_command", metavar="ACTION")
    status = sub.add_parser(
        "status",
        help="per instrument: stack, shadow agreement so far, what changes at the switch",
        description="Per instrument: its stack; how its legacy and native drivers agreed in "
        "the shadow runs recorded in the catalog; and what changes when it moves from the "
        "legacy to the native driver (data keys, limits, PVs, settings). Opens no port.",
    )
    status.add_argument(
        "--profile",
        metavar="FILE",
        help="lab profile (default: $DAQBRIDGE_PROFILE, else the embedded simulated lab)",
    )
    status.add_argument(
        "--data",
        metavar="DIR",
        help="data directory of the catalog (default: the profile's; $DAQBRIDGE_DATA wins)",
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.add_argument("instruments", nargs="*", metavar="ID", help="only these instruments")
    status.set_defaults(func=_status)
    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# --- the report ---------------------------------------------------------------------------------


@dataclass
class Agreement:
    """The shadow runs of one instrument found in the catalog."""

    runs: int = 0
    points: int = 0
    disagreements: int = 0
    last_run: str | None = None
    last_time: float | None = None
    unreadable: list[str] = field(default_factory=list)
    """Runs that say shadow but could not be compared (uid: why)."""

    def format(self) -> str:
        if self.runs == 0 and not self.unreadable:
            return "no shadow runs yet"
        when = dt.datetime.fromtimestamp(self.last_time) if self.last_time else None
        text = (
            f"{self.runs} shadow run(s), {self.points} points compared, "
            f"{self.disagreements} disagreement(s)"
        )
        if when is not None:
            text += f"; last {when:%Y-%m-%d %H:%M} (run {str(self.last_run)[:8]})"
        if self.unreadable:
            text += f"; {len(self.unreadable)} run(s) unreadable: {'; '.join(self.unreadable)}"
        return text


@dataclass
class SwitchChanges:
    """What changes when ``<id>`` moves from the legacy driver to the native one."""

    data_keys_gone: list[str] = field(default_factory=list)
    data_keys_new: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    pvs_gone: list[str] = field(default_factory=list)
    pvs_new: list[str] = field(default_factory=list)
    legacy_only: list[str] = field(default_factory=list)
    """Settings only the legacy driver reads (kept in the file for a switch back)."""
    native_only: list[str] = field(default_factory=list)
    """Settings only the native driver reads."""
    twins: list[str] = field(default_factory=list)
    """Shadow twins (``<id>_legacy``) that go away with the switch to native."""
    problems: list[str] = field(default_factory=list)
    """A driver that refuses the entry as it stands (it would not start after the switch)."""


@dataclass
class InstrumentStatus:
    id: str
    driver: str
    stack: str
    enabled: bool
    next_step: str
    agreement: Agreement | None = None
    changes: SwitchChanges | None = None


# --- shadow agreement from the catalog ----------------------------------------------------------


def _recorded_stack(start: dict[str, Any], instrument: str) -> str | None:
    stacks = start.get("instrument_stacks") or start.get("instruments") or {}
    value = stacks.get(instrument) if isinstance(stacks, dict) else None
    return value if isinstance(value, str) else None


def _catalog_location(profile: Any, data: str | None) -> tuple[Path, str | None]:
    from daqbridge.config import locate_data

    where = locate_data(profile, data)
    return where.catalog_dir, where.uri


def shadow_agreement(
    profile: Any, data: str | None = None
) -> tuple[dict[str, Agreement], str | None]:
    """Agreement per instrument id from the recorded shadow runs; and a note when the catalog
    could not be read (no catalog yet, a server that does not answer)."""
    import tiled.server.app  # noqa: F401 - sets its logger level at import; we override it
    from tiled.queries import Key

    from daqbridge.bridge._shadow import SHADOW_PLAN_NAME, ShadowReport
    from daqbridge.catalog import open_catalog

    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    owner: dict[str, str] = {}  # native device id -> instrument id
    for inst in profile.instruments:
        for ref in inst.model_copy(update={"stack": "native"}).devices():
            owner[ref.id] = inst.id
    result: dict[str, Agreement] = {inst.id: Agreement() for inst in profile.instruments}
    directory, uri = _catalog_location(profile, data)
    api_key = profile.lab.resolved_api_key() if uri else None
    try:
        catalog = open_catalog(directory, uri=uri, api_key=api_key, readonly=True, recover=False)
    except CatalogError as exc:
        if uri is None and not (directory / "catalog.db").exists():
            return result, f"no catalog in {directory} yet: no run has been recorded there"
        return result, f"catalog not read ({exc})"
    with catalog, catalog.reading():
        runs = catalog.client.search(Key("start.plan_name") == SHADOW_PLAN_NAME)
        for uid, run in runs.items():
            start = dict(run.metadata.get("start") or {})
            shadow = start.get("shadow") or {}
            inst_id = owner.get(str(shadow.get("instrument")))
            if inst_id is None or _recorded_stack(start, inst_id) != "shadow":
                continue
            agreement = result[inst_id]
            try:
                report = ShadowReport.from_run(run)
            except (DaqbridgeError, ValueError) as exc:
                agreement.unreadable.append(f"{uid[:8]}: {exc}")
                continue
            agreement.runs += 1
            agreement.points += report.n
            agreement.disagreements += len(report.disagreements)
            when = start.get("time")
            if isinstance(when, int | float) and (
                agreement.last_time is None or when > agreement.last_time
            ):
                agreement.last_time, agreement.last_run = float(when), uid
    return result, None


# --- what changes at the switch -------------------------------------------------------------------


@dataclass
class _Side:
    devices: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - tidying up devices that never connected
                pass


def _native_side(profile: Any, inst: Any, workdir: Path) -> _Side:
    from daqbridge.runtime._builders import BuildContext, build_native
    from daqbridge.transport import SerialPortPool, VisaSessionManager

    side = _Side()
    pool = SerialPortPool()
    side.closers.append(pool.close_all)
    offline = inst.model_copy(update={"stack": "native", "port": "loop://"})
    try:
        built = build_native(offline, BuildContext(profile, pool, VisaSessionManager(), workdir))
    except DaqbridgeError as exc:
        side.error = f"the native driver refuses this entry: {exc}"
        return side
    side.closers.append(built.close)
    side.devices = dict(built.devices)
    return side


def _legacy_side(profile: Any, inst: Any, workdir: Path) -> _Side:
    from daqbridge.legacy import LegacyRuntime
    from daqbridge.runtime._builders import (
        BuildContext,
        build_legacy,
        legacy_adapter_class,
        legacy_adapter_options,
        legacy_limits,
    )
    from daqbridge.transport import SerialPortPool, VisaSessionManager

    side = _Side()
    pool = SerialPortPool()
    side.closers.append(pool.close_all)
    offline = inst.model_copy(update={"stack": "legacy", "port": "loop://"})
    adapter = legacy_adapter_class()
    try:
        instrument, rate = build_legacy(
            offline, BuildContext(profile, pool, VisaSessionManager(), workdir)
        )
        runtime = LegacyRuntime()  # never started: nothing polls, nothing connects
        runtime.add(instrument, rate)
        for ref in offline.devices():
            options = legacy_adapter_options(offline, ref.part)  # as the runtime builds it
            if options is None:
                continue
            device = adapter(runtime, instrument.instrument_id, name=ref.id, **options)
            for parameter, limits in legacy_limits(offline).items():  # the profile's, as at run
                setattr(device, f"{parameter}_limits", limits)
            side.closers.append(device.destroy)
            side.devices[ref.id] = device
    except DaqbridgeError as exc:
        side.error = f"the legacy driver refuses this entry: {exc}"
    return side


def _descriptors(devices: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from daqbridge.devices.core import maybe_sync

    keys: dict[str, dict[str, Any]] = {}
    for device in devices.values():
        for method in ("describe", "describe_configuration"):
            describe = getattr(device, method, None)
            if callable(describe):
                # an ophyd-async device describes itself in a coroutine (no wire traffic)
                keys.update(maybe_sync(describe(), device=device))
    return keys


def _control_limits(descriptor: dict[str, Any]) -> tuple[Any, Any] | None:
    control = (descriptor.get("limits") or {}).get("control") or {}
    if "low" in control or "high" in control:
        return control.get("low"), control.get("high")
    return None


def _pv_names(devices: dict[str, Any]) -> set[str]:
    """The records the IOC would serve for these devices (its own naming, not a copy of it)."""
    from daqbridge.ioc import LabIOC

    ioc = LabIOC(devices, prefix="P:")
    try:
        # the IOC's own records (P:ioc:...) are the same on both stacks and cancel out
        return {name.removeprefix("P:") for name in ioc.record_names()}
    finally:
        ioc.close()


_IDENTITY_KEYS = frozenset({"id", "driver", "stack", "enabled", "description", "sim"})
"""The entry's identity, the switch itself and the simulator: not settings of either driver."""


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return [leaf for i, v in enumerate(data) for leaf in _leaves(v, (*path, i))]
    return [(path, data)]


def _key(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def settings_by_stack(
    inst: Any, legacy: SettingsRead, native: SettingsRead
) -> tuple[list[str], list[str]]:
    """(keys only the legacy driver reads, keys only the native driver reads) of what the entry
    sets, from what each stack's builders read while building it."""
    legacy_only: list[str] = []
    native_only: list[str] = []
    for path, value in _leaves(inst.model_dump(exclude_unset=True)):
        if path[0] in _IDENTITY_KEYS:
            continue
        by_legacy, by_native = legacy.covers(path), native.covers(path)
        if by_legacy != by_native:
            (legacy_only if by_legacy else native_only).append(f"{_key(path)} = {value!r}")
    return legacy_only, native_only


def switch_changes(profile: Any, inst: Any) -> SwitchChanges:
    """What changes for plans, the catalog and the IOC when ``inst`` moves from its legacy
    driver to its native one (read backwards for a rollback)."""
    changes = SwitchChanges()
    if inst.stack == "shadow":
        changes.twins = [r.id for r in inst.devices() if r.stack == "legacy"]
    legacy_entry, legacy_read = watched(inst)
    native_entry, native_read = watched(inst)
    with tempfile.TemporaryDirectory(prefix="daqbridge-migration-") as workdir:
        legacy = _legacy_side(profile, legacy_entry, Path(workdir))
        native = _native_side(profile, native_entry, Path(workdir))
        try:
            for side in (legacy, native):
                if side.error:
                    changes.problems.append(side.error)
            if legacy.error or native.error:
                return changes  # a build cut short read only part of the entry
            changes.legacy_only, changes.native_only = settings_by_stack(
                inst, legacy_read, native_read
            )
            old, new = _descriptors(legacy.devices), _descriptors(native.devices)
            changes.data_keys_gone = sorted(set(old) - set(new))
            changes.data_keys_new = sorted(set(new) - set(old))
            for key in sorted(set(old) | set(new)):
                before = _control_limits(old[key]) if key in old else None
                after = _control_limits(new[key]) if key in new else None
                if before != after:
                    changes.limits.append(f"{key}: {_range(before)} -> {_range(after)}")
            old_pvs, new_pvs = _pv_names(legacy.devices), _pv_names(native.devices)
            changes.pvs_gone = sorted(old_pvs - new_pvs)
            changes.pvs_new = sorted(new_pvs - old_pvs)
        finally:
            native.close()
            legacy.close()
    return changes


def _range(limits: tuple[Any, Any] | None) -> str:
    if limits is None:
        return "none"
    low, high = limits
    return f"[{low:g}, {high:g}]" if low is not None and high is not None else f"[{low}, {high}]"


# --- the command ---------------------------------------------------------------------------------

_NEXT = {
    "legacy": "next: daqbridge config switch {id} --stack shadow (compare both drivers)",
    "shadow": "next, when the runs agree: daqbridge config switch {id} --stack native",
    "native": "done; roll back with: daqbridge config switch {id} --stack legacy",
}


def migration_status(
    profile: Any, *, data: str | None = None, only: list[str] | None = None
) -> tuple[list[InstrumentStatus], str | None]:
    """Every instrument's status (those in ``only`` when given), and a note on the catalog."""
    from daqbridge.config import LEGACY_DRIVERS

    known = [inst.id for inst in profile.instruments]
    for asked in only or []:
        if asked not in known:
            import difflib

            close = difflib.get_close_matches(asked, known, n=1)
            raise ConfigError(
                f"no instrument {asked!r} in the profile.",
                file=profile.label,
                key="instruments",
                fix=(f"did you mean {close[0]!r}? " if close else "")
                + f"instrument ids: {', '.join(known)}.",
            )
    selected = [i for i in profile.instruments if not only or i.id in only]
    switchable = [i for i in selected if i.driver in LEGACY_DRIVERS]
    agreement, note = shadow_agreement(profile, data) if switchable else ({}, None)
    out = []
    for inst in selected:
        status = InstrumentStatus(inst.id, inst.driver, inst.stack, inst.enabled, "")
        if inst.driver not in LEGACY_DRIVERS:
            status.next_step = "native only: there is no legacy driver for it"
        else:
            status.next_step = _NEXT[inst.stack].format(id=inst.id)
            status.agreement = agreement.get(inst.id)
            status.changes = switch_changes(profile, inst)
        out.append(status)
    return out, note


def format_status(statuses: list[InstrumentStatus], note: str | None) -> str:
    lines: list[str] = []
    for s in statuses:
        head = f"{s.id} ({s.driver}): stack {s.stack}" + ("" if s.enabled else " (disabled)")
        lines.append(head)
        lines.append(f"  {s.next_step}")
        if s.agreement is not None:
            lines.append(f"  shadow agreement: {s.agreement.format()}")
        c = s.changes
        if c is not None:
            lines.append(
                "  since the switch to native (a rollback reverses it):"
                if s.stack == "native"
                else "  at the switch to native:"
            )
            for what, items in (
                ("driver problem", c.problems),
                ("shadow twins removed", c.twins),
                ("data keys removed", c.data_keys_gone),
                ("data keys added", c.data_keys_new),
                ("limits", c.limits),
                ("PVs removed", c.pvs_gone),
                ("PVs added", c.pvs_new),
                ("settings only the legacy driver reads (kept for a switch back)", c.legacy_only),
                ("settings only the native driver reads", c.native_only),
            ):
                if items:
                    lines.append(f"    {what}: {', '.join(items)}")
            if not any(asdict(c).values()):
                lines.append("    nothing: the same data keys, limits, PVs and settings")
        lines.append("")
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines).rstrip("\n")


def _status(args: argparse.Namespace) -> int:
    from daqbridge.config import load_profile

    source = args.profile or os.environ.get(PROFILE_ENV, "").strip() or None
    profile = load_profile(source)
    statuses, note = migration_status(profile, data=args.data, only=args.instruments or None)
    if args.json:
        print(json.dumps({"instruments": [asdict(s) for s in statuses], "note": note}, indent=2))
    else:
        print(f"migration status of {profile.label} ({profile.lab.name})\n")
        print(format_status(statuses, note))
    return 0
