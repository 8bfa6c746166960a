"""Run forms from the plans' signatures, and a submitted form checked the way ``daqbridge run``
checks its words.

A form is the allow-listed plan (``plan_registry``) seen field by field: devices as choices of
the lab's device ids, numbers as numbers (with the axis' soft limits next to a motor), lists as
``1,2,3``. What a page sends back is a plan name and one text per field; the server turns it into
the same words the command line would have and hands them to ``build_plan_call``, so the page,
the terminal and the queue server refuse the same mistakes with the same messages. Nothing the
page sends is evaluated: unknown fields, plans and devices are refused by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daqbridge.cli._plan_args import (
    DeviceRef,
    PlanCall,
    PlanSpec,
    _ann_text,
    build_plan_call,
    parse_md,
    plan_registry,
    resolve_plan,
)
from daqbridge.errors import PlanArgumentError

_DEVICE_WORDS = ("Movable", "Readable", "Device", "Triggerable", "Flyable")
MAX_FIELD = 2000
"""Characters one field may hold: a list of a few hundred positions, not a file."""


def _group_fields(layout: str) -> list[dict[str, Any]]:
    if layout == "count":
        return [
            {"name": "num", "kind": "int", "default": 1, "positional": True},
            {"name": "delay", "kind": "number", "default": 0.0, "positional": True},
        ]
    if layout == "scan":
        return [
            {"name": "motor", "kind": "motor", "positional": True},
            {"name": "start", "kind": "number", "positional": True},
            {"name": "stop", "kind": "number", "positional": True},
            {"name": "num", "kind": "int", "positional": True},
        ]
    if layout == "grid":
        return [
            {"name": "motor", "kind": "motor", "positional": True},
            {"name": "start", "kind": "number", "positional": True},
            {"name": "stop", "kind": "number", "positional": True},
            {"name": "num", "kind": "int", "positional": True},
            {"name": "motor2", "kind": "motor", "positional": True},
            {"name": "start2", "kind": "number", "positional": True},
            {"name": "stop2", "kind": "number", "positional": True},
            {"name": "num2", "kind": "int", "positional": True},
            {"name": "snake_axes", "kind": "bool", "default": False, "positional": False},
        ]
    # list layouts
    return [
        {"name": "motor", "kind": "motor", "positional": True},
        {"name": "points", "kind": "list", "positional": True},
    ]


def _kind(param: inspect.Parameter) -> str:
    text = _ann_text(param)
    if any(word in text for word in _DEVICE_WORDS):
        return (
            "list_devices"
            if text.startswith("Sequence[")
            else ("motor" if "Movable" in text else "device")
        )
    if text.startswith("Sequence[") or "Iterable" in text:
        return "list"
    if text.startswith("int"):
        return "int"
    if text.startswith("float"):
        return "number"
    if text.startswith("bool"):
        return "bool"
    return "text"


def _default(param: inspect.Parameter) -> Any:
    if param.default is param.empty or param.default in (None, ()):
        return None
    value = param.default
    return value if isinstance(value, bool | int | float | str) else None


def plan_form(spec: PlanSpec) -> dict[str, Any]:
    """The form of one plan: its fields in the order the command line takes them."""
    if spec.layout in ("count", "scan", "grid", "list"):
        fields = _group_fields(spec.layout)
    else:
        fields = []
        for p in spec.parameters():
            if p.name == "md" or p.kind is p.VAR_POSITIONAL:
                continue
            fields.append(
                {
                    "name": p.name,
                    "kind": _kind(p),
                    "default": _default(p),
                    "positional": p.kind is p.POSITIONAL_OR_KEYWORD,
                    "required": p.default is p.empty,
                    "annotation": _ann_text(p),
                }
            )
    return {
        "name": spec.name,
        "summary": spec.summary,
        "usage": spec.usage(),
        "detectors": spec.takes_detectors,
        "fields": fields,
    }


def plan_forms() -> list[dict[str, Any]]:
    return [plan_form(spec) for spec in plan_registry().values()]


@dataclass
class Submission:
    """What a page sends to queue a plan (validated by the server, never trusted)."""

    plan: str
    values: dict[str, str] = field(default_factory=dict)
    detectors: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    """``key=value`` lines, as ``daqbridge run --md`` takes them."""


def _too_long(spec: PlanSpec, name: str) -> PlanArgumentError:
    return PlanArgumentError(
        f"{spec.name}(): the field {name!r} holds more than {MAX_FIELD} characters.",
        fix="shorten it; a plan's arguments are numbers, device ids and short lists.",
    )


def words_of(spec: PlanSpec, form: Mapping[str, Any], sub: Submission) -> list[str]:
    """The command-line words the form's values stand for (empty optional fields left out)."""
    known = {f["name"]: f for f in form["fields"]}
    unknown = sorted(set(sub.values) - set(known))
    if unknown:
        raise PlanArgumentError(
            f"{spec.name}() has no field {', '.join(map(repr, unknown))}; its fields: "
            f"{', '.join(known) or 'none'}.",
            fix=f"use the form of {spec.name}; the command line form is `{spec.usage()}`.",
        )
    words: list[str] = []
    for f in form["fields"]:
        text = str(sub.values.get(f["name"], "")).strip()
        if len(text) > MAX_FIELD:
            raise _too_long(spec, f["name"])
        if not text:
            continue
        if f["positional"]:
            words.append(text)
        else:
            words.append(f"{f['name']}={text}")
    return words


def check_submission(sub: Submission, device_ids: Sequence[str]) -> PlanCall:
    """The checked call, or :class:`PlanArgumentError` with ``daqbridge run``'s own message.

    Devices are placeholders here (:class:`DeviceRef`), as in ``daqbridge run``'s first check;
    the worker checks the call again against the real devices (soft limits, the plan's own
    checks) before the RunEngine moves anything (``checked_plan``)."""
    spec = resolve_plan(sub.plan)
    form = plan_form(spec)
    words = words_of(spec, form, sub)
    refs = {device_id: DeviceRef(device_id) for device_id in device_ids}
    md = parse_md(sub.md)
    return build_plan_call(spec, words, refs, detectors=sub.detectors, md=md)


def by_id(value: Any) -> Any:
    """Devices as their ids, the only form the queue server takes (its worker resolves them)."""
    if isinstance(value, DeviceRef):
        return value.id
    if isinstance(value, list | tuple):
        return [by_id(v) for v in value]
    if isinstance(value, dict):
        return {k: by_id(v) for k, v in value.items()}
    return value
