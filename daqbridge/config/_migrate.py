"""Turning a legacy configuration file into a lab profile.

The legacy stack configured each instrument as ``[instruments.<name>]`` with ``type``, ``port``,
``baud_rate``, ``polling_rate_hz`` and per-type keys (``device_addresses = [2, 3]``), plus an
optional ``[runtime]`` table. Migration writes the same instruments as ``[[instruments]]`` entries
with ``stack = "legacy"``, so nothing changes behaviour until the lab moves an instrument to the
native stack on purpose.

"Nothing changes" is checked key by key against the legacy driver's own options model: a key
the profile says in its own words (``LEGACY_KEYS``: ``timeout_s`` is ``timeout``, ``xonxoff`` is
``flow_control``) is written there; any other key of that model goes to the entry's ``legacy``
table, which the runtime hands back to the legacy driver; where the legacy driver's default
differs from the profile's (the MaiTai's 2 s reply timeout and no flow control), the legacy value
is written out and reported. A key no model knows is dropped, and every dropped key has a line in
the report saying why.

What cannot be decided mechanically is reported, never guessed: an ESP300 axis without limits
gets no invented limits (a wrong limit drives a stage into its end stop), an unknown type is
written commented out, two instruments on one port keep the first. The written profile is then
loaded like any other, so the report also lists what the profile checker still objects to.

This parser is independent of ``daqbridge.legacy``'s own loader on purpose: migration must read
old files the legacy runtime might no longer accept (types whose driver was removed, for one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel
from tomlkit.items import Array, InlineTable, Table

from daqbridge.config._models import (
    ESP300_UNIT_CODES,
    INSTRUMENT_CLASSES,
    LEGACY_KEYS,
    LegacyRuntimeSettings,
    ShutdownDeadlines,
    legacy_options_model,
)
from daqbridge.devices.maitai import TUNING_RANGE_NM
from daqbridge.errors import ConfigError

# legacy type -> profile driver
LEGACY_TYPES: dict[str, str] = {
    "newport_1830c": "newport1830c",
    "newport1830c": "newport1830c",
    "elliptec": "elliptec",
    "maitai": "maitai",
    "mai_tai": "maitai",
    "esp300": "esp300",
    "esp_300": "esp300",
}

_COMMON = ("type", "port", "baud_rate", "polling_rate_hz")
_FILTERS = {1: "slow", 2: "medium", 3: "fast"}
_UNITS_1830 = {1: "W", 2: "dBm", 3: "dB", 4: "REL"}
_TERMINATORS = {"\n": "LF", "\r": "CR", "\r\n": "CRLF", "lf": "LF", "cr": "CR", "crlf": "CRLF"}


@dataclass
class LegacyEntry:
    """One ``[instruments.<name>]`` table of a legacy file, as written (nothing validated)."""

    name: str
    type: Any
    port: Any = None
    baud_rate: Any = None
    polling_rate_hz: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"instruments.{self.name}"


@dataclass
class LegacyFile:
    source: str
    instruments: list[LegacyEntry]
    runtime: dict[str, Any]
    other: dict[str, Any]
    """Top-level tables that are neither [instruments] nor [runtime]."""


@dataclass
class Migration:
    """The result: the profile text, and what a person still has to decide."""

    source: str
    profile_text: str
    decisions: list[str] = field(default_factory=list)
    """Manual decisions needed, each naming the legacy key and what to do."""
    notes: list[str] = field(default_factory=list)
    """What was done that a reviewer should know about (merges, renamed ids, defaults)."""
    problems: list[str] = field(default_factory=list)
    """What the profile checker reports on the written profile (empty when it loads)."""
    dropped: list[str] = field(default_factory=list)
    """Legacy keys (and tables) not carried into the profile; each has a line in decisions."""

    @property
    def complete(self) -> bool:
        """The profile loads as written and nothing waits for a decision."""
        return not self.decisions and not self.problems


# --- reading the legacy file --------------------------------------------------------------------


def parse_legacy(source: str | os.PathLike) -> LegacyFile:
    """Read a legacy file (path or TOML text). Only unreadable input raises ConfigError."""
    if isinstance(source, os.PathLike) or (
        "\n" not in source and (source.endswith(".toml") or os.path.exists(source))
    ):
        path = Path(os.fspath(source))
        label = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                "legacy configuration file not found",
                file=label,
                fix="give the path of the legacy TOML file (the one with [instruments.<name>]).",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the legacy configuration: {exc}",
                file=label,
                fix="check the path, the permissions, and that the file is UTF-8 text.",
            ) from None
    else:
        label, text = "<string>", str(source)
    from daqbridge.config._load import parse_toml

    data = parse_toml(text, label)
    raw = data.get("instruments")
    if not isinstance(raw, dict) or not raw:
        hint = (
            " (this looks like a profile already: it has [[instruments]])"
            if isinstance(raw, list)
            else ""
        )
        raise ConfigError(
            f"no [instruments.<name>] tables found{hint}",
            file=label,
            key="instruments",
            fix="give the legacy configuration file; `daqbridge config check` checks profiles.",
        )
    instruments = []
    for name, table in raw.items():
        if not isinstance(table, dict):
            table = {"type": None, "_not_a_table": table}
        options = {k: v for k, v in table.items() if k not in _COMMON}
        instruments.append(
            LegacyEntry(
                name=name,
                type=table.get("type"),
                port=table.get("port"),
                baud_rate=table.get("baud_rate"),
                polling_rate_hz=table.get("polling_rate_hz"),
                options=options,
            )
        )
    runtime = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
    other = {k: v for k, v in data.items() if k not in ("instruments", "runtime")}
    if "runtime" in data and not isinstance(data["runtime"], dict):
        other["runtime"] = data["runtime"]
    return LegacyFile(label, instruments, runtime, other)


# --- converting ---------------------------------------------------------------------------------


class _Converter:
    def __init__(self, legacy: LegacyFile) -> None:
        self.legacy = legacy
        self.decisions: list[str] = []
        self.notes: list[str] = []
        self.dropped: list[str] = []
        self.entries: list[tuple[list[str], dict[str, Any]]] = []
        self.commented: list[tuple[list[str], dict[str, Any]]] = []
        self.used_ids: set[str] = set()

    def decide(self, key: str, text: str) -> None:
        self.decisions.append(f"{key}: {text}")

    def note(self, key: str, text: str) -> None:
        self.notes.append(f"{key}: {text}")

    def drop(self, key: str, why: str) -> None:
        self.dropped.append(key)
        self.decide(key, f"{why}; it was not migrated.")

    def run(self) -> None:
        by_port: dict[Any, dict[str, Any]] = {}
        for inst in self.legacy.instruments:
            if "_not_a_table" in inst.options:
                self.dropped.append(inst.key)
                self.decide(inst.key, "is not a table; it was not migrated. Rewrite it by hand.")
                continue
            driver = LEGACY_TYPES.get(str(inst.type).lower()) if inst.type is not None else None
            if driver is None:
                self._unknown_type(inst)
                continue
            if not isinstance(inst.port, str) or not inst.port.strip():
                self.decide(
                    f"{inst.key}.port",
                    f"missing or not a string ({inst.port!r}); the entry is written with "
                    'port = "" and must be given the real port.',
                )
            entry = self._common(inst, driver)
            if driver in LEGACY_KEYS:
                self._with_legacy_driver(inst, entry)
            else:
                self._esp300(inst, entry)
            shared = by_port.get(inst.port) if isinstance(inst.port, str) else None
            if shared is not None:
                self._shared_port(inst, entry, shared)
                continue
            if isinstance(inst.port, str):
                by_port[inst.port] = entry
            self.entries.append(([f"migrated from [{inst.key}] (type {inst.type!r})"], entry))
            if isinstance(inst.port, str) and re.match(r"^/dev/tty(USB|ACM)\d+$", inst.port):
                self.note(
                    f"{inst.key}.port",
                    f"{inst.port} can change when adapters are re-plugged; consider its "
                    "/dev/serial/by-id/... name (`daqbridge hardware` lists them).",
                )

    def _unknown_type(self, inst: LegacyEntry) -> None:
        known = sorted({v for v in LEGACY_TYPES.values()})
        said = "has no type" if inst.type is None else f"type {inst.type!r} has no profile driver"
        self.dropped.append(inst.key)
        self.decide(
            f"{inst.key}.type",
            f"{said} (known: {', '.join(known)}); it is written commented out. Describe it as a "
            "'scpi' entry (VISA) if it speaks SCPI, or keep running it from the legacy file.",
        )
        table: dict[str, Any] = {} if inst.type is None else {"type": inst.type}
        for k in ("port", "baud_rate", "polling_rate_hz"):
            if getattr(inst, k) is not None:
                table[k] = getattr(inst, k)
        table.update(inst.options)
        self.commented.append(
            ([f"[{inst.key}] (type {inst.type!r}): no profile driver, decide by hand"], table)
        )

    def _ident(self, name: str) -> str:
        ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
        if not ident or not re.match(r"[A-Za-z_]", ident):
            ident = f"i_{ident}"
        if ident != name:
            self.note(f"instruments.{name}", f"id written as {ident!r} (ids are identifiers).")
        base, n = ident, 2
        while ident in self.used_ids:
            ident, n = f"{base}_{n}", n + 1
        self.used_ids.add(ident)
        return ident

    def _common(self, inst: LegacyEntry, driver: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self._ident(inst.name),
            "driver": driver,
            "stack": "legacy",
            "port": inst.port if isinstance(inst.port, str) else "",
        }
        baud = inst.baud_rate
        if baud is None:
            baud = _legacy_default_baud(driver)
            profile_baud = INSTRUMENT_CLASSES[driver].model_fields["baud_rate"].default
            if baud is not None and baud != profile_baud:
                self.note(
                    f"{inst.key}.baud_rate",
                    f"not set: the legacy driver's default {baud} is written out (the "
                    f"profile's default is {profile_baud}).",
                )
            else:
                baud = None
        if baud is not None:
            entry["baud_rate"] = baud
        if inst.polling_rate_hz is not None:
            entry["polling_rate_hz"] = _number(inst.polling_rate_hz)
        return entry

    # --- drivers that have a legacy twin: every key of its options model is accounted for -----

    def _with_legacy_driver(self, inst: LegacyEntry, entry: dict[str, Any]) -> None:
        driver = entry["driver"]
        options, extra = _canonical_options(driver, inst.options)
        model = legacy_options_model(driver)
        known = set(model.model_fields) if model is not None else set()
        mapped = {k.option: k for k in LEGACY_KEYS[driver]}
        table: dict[str, Any] = {}
        for name, value in options.items():
            if name in mapped:
                if name != "device_addresses":  # the bus's list has its own conversion
                    _put(entry, mapped[name].path, mapped[name].to_profile(value))
            elif name in known:
                table[name] = _number(value) if _is_float_field(model, name) else value
            else:
                self.drop(
                    f"{inst.key}.{name}",
                    f"the legacy {inst.type} driver has no key {name!r} (its keys: "
                    f"{', '.join(sorted(known)) or 'none registered'}), nor has the profile",
                )
        for path, value in extra.items():
            _put(entry, path, value)
        for name, key in mapped.items():
            if name in options or model is None or name not in model.model_fields:
                continue
            info = model.model_fields[name]
            if info.is_required():
                continue
            ours, theirs = key.to_profile(info.default), _profile_default(driver, key.path)
            if ours is not None and ours != theirs:
                _put(entry, key.path, ours)
                self.note(
                    f"{inst.key}.{name}",
                    f"not set: the legacy driver's default {info.default!r} is written out as "
                    f"{key.key} = {ours!r} (the profile's default, {theirs!r}, would change "
                    "how the instrument runs).",
                )
        if driver == "elliptec":
            self._elliptec(inst, entry, options, extra)
        if table:
            entry["legacy"] = table
            self.note(
                inst.key,
                f"{', '.join(table)}: kept in the entry's legacy table (read only by the legacy "
                "driver; they stay in the file when the instrument is switched).",
            )

    def _elliptec(
        self,
        inst: LegacyEntry,
        entry: dict[str, Any],
        options: dict[str, Any],
        extra: dict[tuple[str, ...], Any],
    ) -> None:
        raw = options.get("device_addresses")
        if raw is None:
            self.decide(
                f"{inst.key}.device_addresses",
                "no addresses given; address 0 was assumed. List the bus's devices in "
                "elliptec.addresses.",
            )
            raw = [0]
        if not isinstance(raw, list):
            raw = [raw]
        names = inst.options.get("names") if isinstance(inst.options.get("names"), list) else None
        addresses = []
        for n, a in enumerate(raw):
            address = _hex(a)
            if address is None:
                self.dropped.append(f"{inst.key}.device_addresses[{n}]")
                self.decide(
                    f"{inst.key}.device_addresses[{n}]",
                    f"{a!r} is not an Elliptec address (0-F); it was not migrated.",
                )
                continue
            item: dict[str, Any] = {"address": address}
            if names is not None and n < len(names):
                item["name"] = names[n]
            addresses.append(item)
        entry.setdefault("elliptec", {})["addresses"] = addresses

    # --- ESP300: no legacy driver is registered; the old file's own keys -------------------------

    def _esp300(self, inst: LegacyEntry, entry: dict[str, Any]) -> None:
        o = inst.options
        raw = o.get("axes")
        if raw is None and "num_axes" in o:
            raw = list(range(1, int(o["num_axes"]) + 1)) if isinstance(o["num_axes"], int) else []
        if raw is None:
            raw = [1]
            self.note(f"{inst.key}", "no axes given; axis 1 was assumed.")
        axes = []
        for n, a in enumerate(raw if isinstance(raw, list) else [raw]):
            axis: dict[str, Any]
            if isinstance(a, dict):
                number = a.get("number", a.get("axis", n + 1))
                axis = {"number": number, "name": a.get("name", f"axis{number}")}
                units = a.get("units")
                if units is not None:
                    axis["units"] = _esp_units(units)
                for src, dst in (("velocity", "velocity"), ("acceleration", "acceleration")):
                    if src in a:
                        axis[dst] = _number(a[src])
                low = a.get("low_limit", a.get("min"))
                high = a.get("high_limit", a.get("max"))
            else:
                number = a
                axis = {"number": a, "name": f"axis{a}"}
                low = high = None
            if low is None or high is None:
                self.decide(
                    f"{inst.key}.axes[{n}]",
                    f"axis {number} has no travel limits; the profile requires low_limit and "
                    "high_limit (software limits that keep plans inside the stage's travel). "
                    "Read them off the stage's datasheet and add them; none were invented.",
                )
            else:
                axis["low_limit"], axis["high_limit"] = _number(low), _number(high)
            axes.append(axis)
        entry["esp300"] = {"axes": axes}
        for key in o:
            if key not in ("axes", "num_axes"):
                self.drop(
                    f"{inst.key}.{key}",
                    "the profile has no such key for an ESP300 (docs/profile.md lists them)",
                )

    # --- sharing --------------------------------------------------------------------------

    def _shared_port(self, inst: LegacyEntry, entry: dict[str, Any], first: dict[str, Any]) -> None:
        if entry["driver"] == first["driver"] == "elliptec":
            have = {a["address"] for a in first["elliptec"]["addresses"]}
            for a in entry["elliptec"]["addresses"]:
                if a["address"] in have:
                    self.decide(
                        f"{inst.key}.device_addresses",
                        f"address {a['address']} is also listed by instrument {first['id']!r} "
                        "on the same bus; it was written once.",
                    )
                    continue
                a.setdefault("name", f"{entry['id']}_{a['address'].lower()}")
                first["elliptec"]["addresses"].append(a)
            self.note(
                inst.key,
                f"shares the Elliptec bus on {inst.port} with {first['id']!r}: merged into that "
                f"entry (one bus driver owns every address); device ids change to "
                f"{first['id']}_<name>, and the bus keeps {first['id']!r}'s serial settings.",
            )
            for key in sorted(set(entry) | set(first)):
                if key in ("id", "elliptec") or entry.get(key) == first.get(key):
                    continue
                self.dropped.append(f"{inst.key}.{key}")
                self.decide(
                    f"{inst.key}.{key}",
                    f"differs from {first['id']!r} on the same bus ({entry.get(key)!r} here, "
                    f"{first.get(key)!r} there); one bus has one setting, {first['id']!r}'s "
                    "was kept and this one was not migrated.",
                )
            return
        self.decide(
            f"{inst.key}.port",
            f"port {inst.port} is also used by {first['id']!r}; a profile gives each port one "
            "entry. This one is written commented out: correct its port, or drop it.",
        )
        self.commented.append(
            ([f"[{inst.key}]: port {inst.port} is already used by {first['id']!r}"], entry)
        )

    # --- runtime settings -----------------------------------------------------------------

    def runtime_tables(self) -> dict[str, dict[str, Any]]:
        """``[shutdown]`` and ``[legacy]`` from the legacy ``[runtime]`` table."""
        from daqbridge.legacy import RuntimeSettings

        rt = self.legacy.runtime
        shutdown: dict[str, Any] = {}
        restarts: dict[str, Any] = {}
        legacy_defaults = RuntimeSettings()
        stop = rt.get("stop_timeout_s", legacy_defaults.stop_timeout_s)
        if stop != ShutdownDeadlines.model_fields["legacy"].default or "stop_timeout_s" in rt:
            shutdown["legacy"] = _number(stop)
            self.note("runtime.stop_timeout_s", "became [shutdown] legacy.")
        for key, value in rt.items():
            if key == "stop_timeout_s":
                continue
            if key in LegacyRuntimeSettings.model_fields:
                restarts[key] = value if key == "max_restarts" else _number(value)
                self.note(f"runtime.{key}", f"became [legacy] {key}.")
            else:
                self.drop(
                    f"runtime.{key}",
                    f"the legacy [runtime] table has no key {key!r} (its keys: "
                    f"{', '.join(['stop_timeout_s', *LegacyRuntimeSettings.model_fields])})",
                )
        for key in self.legacy.other:
            self.drop(key, "top-level table not known to the legacy format")
        out = {}
        if shutdown:
            out["shutdown"] = shutdown
        if restarts:
            out["legacy"] = restarts
        return out


def _legacy_default_baud(driver: str) -> int | None:
    from daqbridge.config._models import LEGACY_DRIVER_TYPES
    from daqbridge.legacy import registered_drivers

    spec = registered_drivers().get(LEGACY_DRIVER_TYPES.get(driver, ""))
    return spec.default_baud_rate if spec is not None else None


def _canonical_options(
    driver: str, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[tuple[str, ...], Any]]:
    """Older spellings of a legacy file as today's legacy option names (``wavelength`` ->
    ``wavelength_nm``, ``filter = 2`` -> ``"medium"``), plus values that old files held and
    only the profile keeps (the MaiTai's tuning limits), by profile key path."""
    out = dict(options)
    extra: dict[tuple[str, ...], Any] = {}
    if driver == "newport1830c":
        if "wavelength" in out:
            value = out.pop("wavelength")
            out.setdefault("wavelength_nm", value)
        f = out.get("filter")
        if isinstance(f, int) and not isinstance(f, bool):
            out["filter"] = _FILTERS.get(f, f)
        u = out.get("units")
        if isinstance(u, int) and not isinstance(u, bool):
            out["units"] = _UNITS_1830.get(u, u)
        a = out.get("attenuator")
        if isinstance(a, int) and not isinstance(a, bool) and a in (0, 1):
            out["attenuator"] = bool(a)
    elif driver == "maitai":
        for alias in ("eol",):
            if alias in out:
                value = out.pop(alias)
                out.setdefault("terminator", value)
        t = out.get("terminator")
        if isinstance(t, str):
            out["terminator"] = _TERMINATORS.get(t.lower(), _TERMINATORS.get(t, t))
        if "wavelength_limits" in out:
            extra[("maitai", "wavelength_limits")] = out.pop("wavelength_limits")
        if "wavelength_min" in out or "wavelength_max" in out:
            extra[("maitai", "wavelength_limits")] = [
                _number(out.pop("wavelength_min", TUNING_RANGE_NM[0])),
                _number(out.pop("wavelength_max", TUNING_RANGE_NM[1])),
            ]
    elif driver == "elliptec":
        for alias in ("addresses", "address"):
            if alias in out:
                value = out.pop(alias)
                out.setdefault("device_addresses", value)
        out.pop("names", None)  # names the addresses; used with them
    return out, extra


def _put(entry: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = entry
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _profile_default(driver: str, path: tuple[str, ...]) -> Any:
    model: Any = INSTRUMENT_CLASSES[driver]
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    info = model.model_fields[path[-1]]
    if info.default_factory is not None:
        return info.default_factory()
    return info.default


def _is_float_field(model: type[BaseModel] | None, name: str) -> bool:
    info = model.model_fields.get(name) if model is not None else None
    return info is not None and "float" in str(info.annotation)


def migrate_legacy(source: str | os.PathLike, *, lab_name: str | None = None) -> Migration:
    """Convert a legacy file (path or text) to profile text, and check the result."""
    legacy = parse_legacy(source)
    conv = _Converter(legacy)
    conv.run()
    tables = conv.runtime_tables()
    name = lab_name or (
        f"migrated from {Path(legacy.source).name}" if legacy.source != "<string>" else "lab"
    )
    text = _render(legacy, conv, name, tables)
    migration = Migration(legacy.source, text, conv.decisions, conv.notes, dropped=conv.dropped)
    from daqbridge.config._load import load_profile
    from daqbridge.config._validate import ProfileInvalid

    try:
        load_profile(text)
    except ProfileInvalid as exc:
        migration.problems = [
            f"{i.key}: {i.what} Fix: {i.fix}" if i.key else f"{i.what} Fix: {i.fix}"
            for i in exc.issues
        ]
    except ConfigError as exc:  # a syntax error in what we wrote would be our bug; say so
        migration.problems = [f"the written profile does not parse: {exc}"]
    return migration


def _comment_text(text: str) -> str:
    """A comment line naming what the legacy file said: its control characters (a stray
    backspace in an axis name) escaped, as TOML comments may not hold them."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _render(
    legacy: LegacyFile, conv: _Converter, name: str, tables: dict[str, dict[str, Any]]
) -> str:
    doc = tomlkit.document()
    for line in (
        f"daqbridge lab profile, migrated from {legacy.source}.",
        'Every instrument keeps running on the legacy stack (stack = "legacy"): switch one',
        'to "shadow" to compare its native driver with the legacy one, then to "native"',
        "(`daqbridge config switch ID --stack shadow`; `daqbridge migration status` first).",
        "Check it with `daqbridge config check FILE`; reference: docs/profile.md.",
    ):
        doc.add(tomlkit.comment(line))
    if conv.decisions:
        doc.add(tomlkit.comment(""))
        doc.add(tomlkit.comment("Decisions left to a person (see also the migrate report):"))
        for d in conv.decisions:
            doc.add(tomlkit.comment(_comment_text(f"  - {d}")))
    doc.add(tomlkit.nl())
    top: dict[str, Any] = {
        "lab": {"name": name, "data_dir": "~/daqbridge-data"},
        "stacks": {"native": True, "legacy": True},
        "simulation": {"enabled": False},
        **tables,
    }
    for key, value in top.items():
        doc.add(key, _item(value, top_level=True))
    if conv.entries:
        entries = tomlkit.aot()
        for comments, entry in conv.entries:
            table = tomlkit.table()
            for c in comments:
                table.add(tomlkit.comment(_comment_text(c)))
            _fill(table, entry)
            entries.append(table)
        doc.add("instruments", entries)
    text = tomlkit.dumps(doc).rstrip("\n") + "\n"
    for comments, entry in conv.commented:
        block = dumps_toml({"instruments": [entry]})
        lines = [f"# {c}" for c in comments]
        lines += [f"# {line}" if line else "#" for line in block.rstrip("\n").splitlines()]
        text += "\n" + "\n".join(lines) + "\n"
    return text


def _number(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _hex(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value <= 15:
        return f"{value:X}"
    if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]", value.strip()):
        return value.strip().upper()
    return None


def _esp_units(units: Any) -> Any:
    if isinstance(units, int) and not isinstance(units, bool):
        by_code = {v: k for k, v in ESP300_UNIT_CODES.items()}
        return by_code.get(units, units)
    return units


# --- writing TOML (tomlkit: proper escaping, and the same library edits profiles) ----------------

_INLINE_WIDTH = 60
"""A nested table longer than this (as inline TOML) is written as a ``[section]``."""


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _inline(value: Mapping[str, Any]) -> InlineTable:
    table = tomlkit.inline_table()
    for key, item in value.items():
        table.append(key, _plain(item))
    return table


def _plain(value: Any) -> Any:
    """A value inside an inline table or array: everything inline."""
    if isinstance(value, Mapping):
        return _inline(value)
    if isinstance(value, list | tuple):
        array = tomlkit.array()
        array.extend(_plain(v) for v in value)
        return array
    return tomlkit.item(value)


def _lines(value: list[Mapping[str, Any]]) -> Array:
    """An array of tables inside a table: one inline table per line, as profiles are written."""
    array = tomlkit.array()
    array.extend(_inline(v) for v in value)
    return array.multiline(True)


def _item(value: Any, *, top_level: bool = False, sections: bool = False) -> Any:
    if isinstance(value, Mapping):
        if top_level or sections or len(_inline(value).as_string()) > _INLINE_WIDTH:
            table = tomlkit.table()
            _fill(table, value, sections=sections)
            return table
        return _inline(value)
    if _is_table_array(value):
        if top_level:
            tables = tomlkit.aot()
            for v in value:
                table = tomlkit.table()
                _fill(table, v)
                tables.append(table)
            return tables
        return _lines(value)
    return _plain(value)


def _fill(table: Table, data: Mapping[str, Any], *, sections: bool = True) -> None:
    """Plain keys first, then sub-tables: TOML puts every key after ``[a.b]`` inside it."""
    plain = [(k, v) for k, v in data.items() if not isinstance(v, Mapping)]
    nested = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
    for key, value in plain:
        table.add(key, _item(value))
    for key, value in nested:
        table.add(key, _item(value, sections=sections))


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write plain data (tables, arrays, strings, numbers, booleans) as readable TOML.

    Small tables are written inline, larger ones as ``[sections]``; top-level arrays of tables
    as ``[[arrays]]``, nested ones one inline table per line, the way profiles are written by
    hand. ``tomllib.loads(dumps_toml(d)) == d`` for such data.
    """
    doc = tomlkit.document()
    for key, value in data.items():
        doc.add(key, _item(value, top_level=True))
    return tomlkit.dumps(doc).lstrip("\n")
