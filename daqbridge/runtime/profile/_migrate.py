"""Turning a legacy configuration file into a lab profile.

The legacy stack configured each instrument as ``[instruments.<name>]`` with ``type``, ``port``,
``baud_rate``, ``polling_rate_hz`` and per-type keys (``device_addresses = [2, 3]``), plus an
optional ``[runtime]`` table. Migration writes the same instruments as ``[[instruments]]`` entries
with ``stack = "legacy"``, so nothing changes behaviour until the lab moves an instrument to the
native stack on purpose.

What cannot be decided mechanically is reported, never guessed: an ESP300 axis without limits
gets no invented limits (a wrong limit drives a stage into its end stop), an unknown type is
written commented out, two instruments on one port keep the first. The written profile is then
loaded like any other, so the report also lists what the profile checker still objects to.

This parser is independent of ``daqbridge.legacy``'s own loader on purpose: migration must read
old files the legacy runtime might no longer accept (types whose driver was removed, for one).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daqbridge.errors import ConfigError
from daqbridge.runtime.profile._models import ESP300_UNIT_CODES

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
    from daqbridge.runtime.profile._load import parse_toml

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
        self.entries: list[tuple[list[str], dict[str, Any]]] = []
        self.commented: list[tuple[list[str], dict[str, Any]]] = []
        self.used_ids: set[str] = set()

    def decide(self, key: str, text: str) -> None:
        self.decisions.append(f"{key}: {text}")

    def note(self, key: str, text: str) -> None:
        self.notes.append(f"{key}: {text}")

    def run(self) -> None:
        by_port: dict[Any, dict[str, Any]] = {}
        for inst in self.legacy.instruments:
            if "_not_a_table" in inst.options:
                self.decide(inst.key, "is not a table; it was left out. Rewrite it by hand.")
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
            convert = getattr(self, f"_{driver}")
            convert(inst, entry)
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
        if inst.baud_rate is not None:
            entry["baud_rate"] = inst.baud_rate
        if inst.polling_rate_hz is not None:
            entry["polling_rate_hz"] = _number(inst.polling_rate_hz)
        return entry

    def _leftovers(self, inst: LegacyEntry, used: set[str]) -> None:
        for key in inst.options:
            if key not in used:
                self.decide(
                    f"{inst.key}.{key}",
                    "has no place in the profile; it was not migrated. Check whether the "
                    "driver still needs it (docs/profile.md lists the keys of each driver).",
                )

    # --- per type -----------------------------------------------------------------------------

    def _newport1830c(self, inst: LegacyEntry, entry: dict[str, Any]) -> None:
        o, table = inst.options, {}
        if "wavelength_nm" in o:
            table["wavelength_nm"] = o["wavelength_nm"]
        elif "wavelength" in o:
            table["wavelength_nm"] = o["wavelength"]
        if "range" in o:
            table["range"] = o["range"]
        if "filter" in o:
            f = o["filter"]
            table["filter"] = _FILTERS.get(f, f) if not isinstance(f, bool) else f
        if "units" in o:
            u = o["units"]
            table["units"] = _UNITS_1830.get(u, u) if not isinstance(u, bool) else u
        if "attenuator" in o:
            a = o["attenuator"]
            table["attenuator"] = bool(a) if a in (0, 1) and not isinstance(a, float) else a
        if table:
            entry["newport1830c"] = table
        self._leftovers(
            inst, {"wavelength_nm", "wavelength", "range", "filter", "units", "attenuator"}
        )

    def _maitai(self, inst: LegacyEntry, entry: dict[str, Any]) -> None:
        o, table = inst.options, {}
        if "wavelength_limits" in o:
            table["wavelength_limits"] = o["wavelength_limits"]
        elif "wavelength_min" in o or "wavelength_max" in o:
            table["wavelength_limits"] = [
                _number(o.get("wavelength_min", 690.0)),
                _number(o.get("wavelength_max", 1040.0)),
            ]
        for key in ("reply_terminator", "terminator", "eol"):
            if key in o:
                t = o[key]
                table["reply_terminator"] = _TERMINATORS.get(str(t).lower(), _TERMINATORS.get(t, t))
                break
        if table:
            entry["maitai"] = table
        self._leftovers(
            inst,
            {
                "wavelength_limits",
                "wavelength_min",
                "wavelength_max",
                "reply_terminator",
                "terminator",
                "eol",
            },
        )

    def _elliptec(self, inst: LegacyEntry, entry: dict[str, Any]) -> None:
        o = inst.options
        raw = o.get("device_addresses", o.get("addresses", o.get("address")))
        if raw is None:
            self.decide(
                f"{inst.key}.device_addresses",
                "no addresses given; address 0 was assumed. List the bus's devices in "
                "elliptec.addresses.",
            )
            raw = [0]
        if not isinstance(raw, list):
            raw = [raw]
        names = o.get("names") if isinstance(o.get("names"), list) else None
        addresses = []
        for n, a in enumerate(raw):
            address = _hex(a)
            if address is None:
                self.decide(
                    f"{inst.key}.device_addresses[{n}]",
                    f"{a!r} is not an Elliptec address (0-F); it was left out.",
                )
                continue
            item: dict[str, Any] = {"address": address}
            if names is not None and n < len(names):
                item["name"] = names[n]
            addresses.append(item)
        entry["elliptec"] = {"addresses": addresses}
        self._leftovers(inst, {"device_addresses", "addresses", "address", "names"})

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
        self._leftovers(inst, {"axes", "num_axes"})

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

    def shutdown(self) -> dict[str, Any]:
        rt = self.legacy.runtime
        out: dict[str, Any] = {}
        stop = rt.get("stop_timeout_s")
        if isinstance(stop, int | float) and not isinstance(stop, bool) and stop > 0:
            out["legacy"] = float(stop)
            self.note("runtime.stop_timeout_s", "became [shutdown] legacy.")
        for key in rt:
            if key != "stop_timeout_s":
                self.note(
                    f"runtime.{key}",
                    "restart settings stay with the legacy runtime; not part of a profile.",
                )
        for key in self.legacy.other:
            self.decide(key, "top-level table not known to the legacy format; not migrated.")
        return out


def migrate_legacy(source: str | os.PathLike, *, lab_name: str | None = None) -> Migration:
    """Convert a legacy file (path or text) to profile text, and check the result."""
    legacy = parse_legacy(source)
    conv = _Converter(legacy)
    conv.run()
    shutdown = conv.shutdown()
    name = lab_name or (
        f"migrated from {Path(legacy.source).name}" if legacy.source != "<string>" else "lab"
    )
    text = _render(legacy, conv, name, shutdown)
    migration = Migration(legacy.source, text, conv.decisions, conv.notes)
    from daqbridge.runtime.profile._load import load_profile
    from daqbridge.runtime.profile._validate import ProfileInvalid

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


def _render(legacy: LegacyFile, conv: _Converter, name: str, shutdown: dict[str, Any]) -> str:
    out = [
        f"# daqbridge lab profile, migrated from {legacy.source}.",
        '# Every instrument keeps running on the legacy stack (stack = "legacy"): switch one',
        '# to "shadow" to compare its native driver with the legacy one, then to "native".',
        "# Check it with `daqbridge config check FILE`; reference: docs/profile.md.",
    ]
    if conv.decisions:
        out.append("#")
        out.append("# Decisions left to a person (see also the migrate report):")
        out.extend(f"#   - {d}" for d in conv.decisions)
    out.append("")
    top: dict[str, Any] = {
        "lab": {"name": name, "data_dir": "~/daqbridge-data"},
        "stacks": {"native": True, "legacy": True},
        "simulation": {"enabled": False},
    }
    if shutdown:
        top["shutdown"] = shutdown
    out.append(dumps_toml(top))
    for comments, entry in conv.entries:
        out.extend(f"# {c}" for c in comments)
        out.append(dumps_toml({"instruments": [entry]}))
    for comments, entry in conv.commented:
        out.extend(f"# {c}" for c in comments)
        block = dumps_toml({"instruments": [entry]})
        out.extend(f"# {line}" if line else "#" for line in block.rstrip("\n").splitlines())
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


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


# --- a small TOML writer ------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: Any) -> str:
    text = str(key)
    return text if _BARE_KEY.match(text) else _string(text)


def _string(text: str) -> str:
    # JSON string escapes are TOML basic-string escapes, except that TOML also forbids a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table_body(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping) and (not path or len(_value(value)) > 60):
            subtables.append((key, value))
        elif _is_table_array(value) and not path:
            subtables.append((key, value))
        elif _is_table_array(value):
            lines.append(f"{_key(key)} = [")
            lines.extend(f"    {_value(v)}," for v in value)
            lines.append("]")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        sub = path + [_key(key)]
        if isinstance(value, Mapping):
            lines.append("")
            lines.append(f"[{'.'.join(sub)}]")
            _table_body(value, sub, lines)
        else:
            for item in value:
                lines.append("")
                lines.append(f"[[{'.'.join(sub)}]]")
                _table_body(item, sub, lines)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write plain data (tables, arrays, strings, numbers, booleans) as readable TOML.

    Small tables are written inline, larger ones as ``[sections]``; top-level arrays of tables
    as ``[[arrays]]``, nested ones one inline table per line, the way profiles are written by
    hand. ``tomllib.loads(dumps_toml(d)) == d`` for such data.
    """
    lines: list[str] = []
    _table_body(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"
