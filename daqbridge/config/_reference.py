"""docs/profile.md's key reference, generated from the models so it cannot drift from them.

The hand-written part of docs/profile.md (what a profile is, the id and sharing rules, examples)
stays in the file; only the part between the GENERATED markers is rewritten, by
``daqbridge config reference --update docs/profile.md``. A test fails when the two differ.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daqbridge.config._models import (
    DRIVERS,
    INSTRUMENT_CLASSES,
    Coupling,
    ElliptecAddress,
    Esp300Axis,
    InstrumentBase,
    LabSettings,
    LegacyRuntimeSettings,
    PvcamRoi,
    ScpiSignal,
    ShutdownDeadlines,
    SimFaults,
    SimSettings,
    SimulationSettings,
    StackSettings,
)
from daqbridge.config._validate import RULES
from daqbridge.errors import ConfigError

BEGIN = "<!-- BEGIN GENERATED REFERENCE: `daqbridge config reference --update docs/profile.md` -->"
END = "<!-- END GENERATED REFERENCE -->"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:g}" if value != int(value) or abs(value) >= 1e15 else f"{value:.1f}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return str(value)


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{_literal(a)}`" for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "array of tables"
        return f"array of {_type(item)}"
    if origin is dict:
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _bounds(info: FieldInfo) -> str:
    parts = []
    for m in info.metadata:
        if isinstance(m, annotated_types.Gt):
            parts.append(f"> {m.gt:g}")
        elif isinstance(m, annotated_types.Ge):
            parts.append(f">= {m.ge:g}")
        elif isinstance(m, annotated_types.Lt):
            parts.append(f"< {m.lt:g}")
        elif isinstance(m, annotated_types.Le):
            parts.append(f"<= {m.le:g}")
        elif isinstance(m, annotated_types.MinLen) and m.min_length:
            parts.append(f"at least {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            parts.append(f"at most {m.max_length}")
    return f" ({', '.join(parts)})" if parts else ""


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "defaults"
        return f"`{_literal(value)}`" if value != {} else "`{}`"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return "unset"
    return f"`{_literal(info.default)}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel], skip: set[str] = frozenset()) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        rows.append(
            f"| `{name}` | {_escape(_type(info.annotation) + _bounds(info))} | "
            f"{_default(info)} | {_escape(info.description or '')} |"
        )
    return rows


def _doc(model: type) -> str:
    return " ".join((model.__doc__ or "").strip().split()).replace("``", "`")


def profile_reference_markdown() -> str:
    """The generated key reference (Markdown) of every table a profile may contain."""
    out: list[str] = [BEGIN, "", "## Key reference", ""]

    def section(
        title: str, model: type[BaseModel], skip: set[str] = frozenset(), note: str = ""
    ) -> None:
        out.extend([f"### {title}", "", _doc(model) + note, ""])
        out.extend(_table(model, skip))
        out.append("")

    section("`[lab]`", LabSettings)
    section("`[stacks]`", StackSettings)
    section("`[simulation]`", SimulationSettings)
    section("`[shutdown]`", ShutdownDeadlines)
    section("`[legacy]`", LegacyRuntimeSettings)
    out.extend(["### `[[instruments]]`: keys of every entry", "", _doc(InstrumentBase), ""])
    out.extend(_table(InstrumentBase))
    out.append("")
    base = set(InstrumentBase.model_fields)
    for driver in DRIVERS:
        cls = INSTRUMENT_CLASSES[driver]
        out.extend([f'### `driver = "{driver}"`', "", _doc(cls), ""])
        if cls.has_legacy_driver:
            out.append("Stacks: `native`, `legacy`, `shadow`.")
        else:
            out.append("Stacks: `native` only.")
        out.append("")
        out.extend(_table(cls, skip=base | {driver}))
        out.append("")
        settings = typing.get_args(cls.model_fields[driver].annotation) or (
            cls.model_fields[driver].annotation,
        )
        settings_model = next(s for s in settings if isinstance(s, type))
        required = cls.model_fields[driver].is_required()
        section(
            f"`[instruments.{driver}]`",
            settings_model,
            note=" Required." if required else " Optional: every key has a default.",
        )
    section("`esp300.axes` entries", Esp300Axis)
    section("`elliptec.addresses` entries", ElliptecAddress)
    section("`scpi.signals` entries", ScpiSignal)
    section("`pvcam.roi`", PvcamRoi)
    section(
        "`sim` (serial instruments and `sim-tcp`)",
        SimSettings,
    )
    section("`sim.faults`", SimFaults)
    section("`[[couplings]]`", Coupling)
    out.extend(["## Checks", "", "| rule | severity | what it catches |", "|---|---|---|"])
    for rule, (severity, text) in RULES.items():
        out.append(f"| `{rule}` | {severity} | {_escape(text)} |")
    out.extend(["", END])
    return "\n".join(out) + "\n"


def update_reference_doc(path: str | Path, *, check: bool = False) -> bool:
    """Rewrite the generated part of ``path``; with ``check``, only report whether it is current.

    Returns True when the file is (or, without ``check``, now is) up to date.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the profile reference: {exc}",
            file=str(path),
            fix="give the path of docs/profile.md.",
        ) from None
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ConfigError(
            "the generated-reference markers are missing",
            file=str(path),
            fix=f"put the lines {BEGIN!r} and {END!r} where the reference goes.",
        )
    new = text[:start] + profile_reference_markdown().rstrip("\n") + text[end + len(END) :]
    if new == text:
        return True
    if check:
        return False
    path.write_text(new, encoding="utf-8")
    return True
