"""The start-document metadata every daqbridge plan writes.

Why a module for it: a run found in the catalog months later must say how it was made
(``plan_name``, ``plan_args`` that can be typed into ``daqbridge run`` again), what was measured
(``detectors``, ``motors``), and, during the migration, which driver stack produced each device's
numbers (``daqbridge_devices``: ``{name: "native" | "legacy"}``), because a legacy and a native
reading of the same instrument can disagree and the comparison must be possible afterwards.
``hints.dimensions`` tells tables and plots (BestEffortCallback, the catalog viewer) what the
independent axis is. The profile name/path needs nothing here: the runtime puts it into
``RE.md``, and the RunEngine merges ``RE.md`` into every start document.

The caller's metadata is checked here too (:func:`check_metadata`), before the plan's first
message: the RunEngine builds the start document only at ``open_run``, so ``md=5`` or
``md={"uid": ...}`` would otherwise fail after the lab has staged and moved things.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from event_model import DocumentNames, schema_validators

from daqbridge.devices import addressed_parts
from daqbridge.plans._checks import MAX_NESTING, plan_error

__all__ = [
    "MAX_METADATA_BYTES",
    "RESERVED_KEYS",
    "check_metadata",
    "device_name",
    "device_stack",
    "device_stacks",
    "jsonable",
    "start_metadata",
]

RESERVED_KEYS: dict[str, str] = {
    "uid": "the run's unique id",
    "time": "the run's start time",
}
"""Start-document keys the RunEngine writes itself; event-model refuses a second value for them
(``dict() got multiple values for keyword argument 'uid'``) only when the run opens."""

MAX_METADATA_BYTES = 1_000_000
"""Largest run metadata (as JSON): every catalog listing reads the start documents, so a
megabyte in one of them slows every search; bulk data belongs in the run's events or files."""

NATIVE = "native"
LEGACY = "legacy"


def device_name(obj: Any) -> str:
    return str(getattr(obj, "name", None) or repr(obj))


def _is_legacy_type(obj: Any) -> bool:
    # The device says which stack reads it (the legacy adapter's ``driver_stack``), so the plans
    # need neither the adapter's class nor its module.
    return getattr(obj, "driver_stack", None) == LEGACY


def device_stack(obj: Any) -> str:
    """``"legacy"`` for a device wrapping a legacy driver, ``"native"`` otherwise.

    A component of a legacy device (``laser.wavelength``) belongs to the legacy stack too.
    """
    node = obj
    while node is not None:
        if _is_legacy_type(node):
            return LEGACY
        node = getattr(node, "parent", None)
    return NATIVE


def _root(obj: Any) -> Any:
    """The device the lab addresses ``obj`` by: its top-level parent, or the first one up that
    the top-level device's driver declares a part the lab addresses by its own id
    (:func:`daqbridge.devices.addressed_parts`: an ESP300's axis is ``sim_stage_x``, not the
    controller ``sim_stage``)."""
    chain = [obj]
    while (parent := getattr(chain[-1], "parent", None)) is not None:
        chain.append(parent)
    top = chain[-1]
    parts = {id(part) for part in addressed_parts(top).values()} if len(chain) > 1 else set()
    return next((node for node in chain if id(node) in parts), top)


def device_stacks(devices: Iterable[Any]) -> dict[str, str]:
    """``{device name: stack}`` for the top-level devices behind ``devices``."""
    out: dict[str, str] = {}
    for obj in devices:
        if obj is None:
            continue
        root = _root(obj)
        out[device_name(root)] = device_stack(root)
    return out


def jsonable(value: Any) -> Any:
    """A JSON-able stand-in for a plan argument: devices by name, numbers as numbers.

    Device names (not ophyd's long reprs) so the recorded ``plan_args`` can be replayed through
    ``daqbridge run`` or a queue server, which both take devices by name.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else repr(f)
    if hasattr(value, "read") or hasattr(value, "set"):
        return device_name(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) or hasattr(value, "tolist"):
        seq = value.tolist() if hasattr(value, "tolist") else value
        return [jsonable(v) for v in seq]
    return repr(value)


def check_metadata(plan: str, md: Any, *, argument: str = "md") -> dict[str, Any]:
    """The caller's run metadata as plain JSON data, or a PlanArgumentError naming the key.

    Refused: anything but a mapping; keys the RunEngine sets (:data:`RESERVED_KEYS`); values
    that are not JSON (objects, NaN, infinity); nesting deeper than ``MAX_NESTING``; more than
    :data:`MAX_METADATA_BYTES`; and values of the keys event-model's run-start schema types
    (``scan_id`` an integer, ``sample`` text or a mapping, ``hints`` a mapping ...).
    """
    if md is None:
        return {}
    if not isinstance(md, Mapping):
        raise plan_error(
            plan,
            argument,
            md,
            f"is {type(md).__name__}, not a mapping of run metadata",
            fix='pass a mapping of keys to values, e.g. {"sample": "A1"} (from the command '
            'line md={"sample": "A1"} or --md sample=A1).',
        )
    plain = _plain_metadata(plan, argument, md)
    for key, meaning in RESERVED_KEYS.items():
        if key in plain:
            raise plan_error(
                plan,
                f"{argument}[{key!r}]",
                plain[key],
                f"sets {key!r}, which the RunEngine writes itself ({meaning})",
                fix=f"rename the key (e.g. 'user_{key}'); every run gets its own {key!r}.",
            )
    size = len(json.dumps(plain))
    if size > MAX_METADATA_BYTES:
        raise plan_error(
            plan,
            argument,
            f"<{len(plain)} keys>",
            f"is {size:,} bytes as JSON, more than the {MAX_METADATA_BYTES:,} a start document "
            "may carry",
            limit=f"<= {MAX_METADATA_BYTES:,} bytes",
            fix="keep metadata short; put bulk data into the run's events or a file and record "
            "its path.",
        )
    validator = schema_validators[DocumentNames.start]
    problem = next(iter(validator.iter_errors({**plain, "uid": "check", "time": 0.0})), None)
    if problem is not None:
        path = list(problem.absolute_path)
        key = path[0] if path else None
        where = f"{argument}[{key!r}]" if key is not None else argument
        raise plan_error(
            plan,
            where,
            plain.get(key) if key is not None else plain,
            f"does not fit the run start document: {_clip(problem.message)}",
            fix=_schema_fix(key),
        )
    return plain


def _clip(text: str, size: int = 160) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


_SCHEMA_FIXES = {
    "scan_id": "give scan_id as a whole number, or leave it to the RunEngine.",
    "sample": 'give sample as text ("A1") or a mapping ({"name": "A1", "batch": 3}).',
    "hints": 'give hints as a mapping, e.g. {"dimensions": [[["motor"], "primary"]]}.',
    "data_groups": 'give data_groups as a list of strings, e.g. ["proposal-42"].',
    "projections": "leave projections to the plans, or follow event-model's Projections schema.",
}


def _schema_fix(key: Any) -> str:
    return _SCHEMA_FIXES.get(
        key,
        "give this key text, a number, a list or a mapping that fits "
        "event-model's run start schema, or use another key.",
    )


def _plain_metadata(plan: str, argument: str, md: Mapping[Any, Any]) -> dict[str, Any]:
    """``md`` as JSON data (numpy values as numbers and lists), checked without recursion so a
    value nested thousands deep is an error message, not a RecursionError."""
    out: dict[str, Any] = {}
    # (source value, container to fill, key in it, where, depth)
    stack: list[tuple[Any, Any, Any, str, int]] = [(md, None, None, argument, 1)]
    while stack:
        value, parent, slot, where, depth = stack.pop()
        if depth > MAX_NESTING:
            raise plan_error(
                plan,
                where if len(where) <= 60 else where[:57] + "...",
                "...",
                f"is nested more than {MAX_NESTING} levels deep",
                limit=f"<= {MAX_NESTING} levels",
                fix="flatten the metadata (several keys instead of nested levels).",
            )
        if isinstance(value, Mapping):
            node: Any = out if parent is None else {}
            for key, item in reversed(list(value.items())):  # popped in the caller's order
                if not isinstance(key, str):
                    raise plan_error(
                        plan,
                        f"{where} key",
                        key,
                        f"is a {type(key).__name__}, not text",
                        fix="use text keys (JSON objects have string keys).",
                    )
                stack.append((item, node, key, f"{where}[{key!r}]", depth + 1))
        elif isinstance(value, list | tuple) or (
            hasattr(value, "tolist") and not isinstance(value, numbers.Number)
        ):
            items = value.tolist() if hasattr(value, "tolist") else value
            if isinstance(items, list | tuple):
                node = [None] * len(items)
                for i, item in reversed(list(enumerate(items))):
                    stack.append((item, node, i, f"{where}[{i}]", depth + 1))
            else:  # a 0-d array
                node = _plain_scalar(plan, where, items)
        else:
            node = _plain_scalar(plan, where, value)
        if parent is not None:
            parent[slot] = node
    return out


def _plain_scalar(plan: str, where: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise plan_error(
                plan,
                where,
                value,
                "is not a finite number (JSON and the catalog have no NaN or infinity)",
                fix="record a finite number, or text such as 'n/a'.",
            )
        return number
    raise plan_error(
        plan,
        where,
        value,
        f"is of type {type(value).__name__}, which the catalog cannot store",
        fix="record text, numbers, true/false, lists or mappings of them (a device by its name).",
    )


def start_metadata(
    plan_name: str,
    plan_args: Mapping[str, Any],
    *,
    detectors: Sequence[Any],
    motors: Sequence[Any] = (),
    devices: Iterable[Any] = (),
    dimensions: list[tuple[list[str], str]] | None = None,
    md: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The start-document metadata of a daqbridge plan; the caller's ``md`` wins on conflicts,
    as in bluesky's own plans, except that its ``hints`` are merged into ours."""
    everything = [*detectors, *motors, *devices]
    out: dict[str, Any] = {
        "plan_name": plan_name,
        "plan_args": {k: jsonable(v) for k, v in plan_args.items()},
        "detectors": [device_name(d) for d in detectors],
        "motors": [device_name(m) for m in motors],
        "daqbridge_devices": device_stacks(everything),
        "hints": {},
    }
    if dimensions:
        out["hints"]["dimensions"] = [[list(fields), stream] for fields, stream in dimensions]
    out.update(extra)
    user = check_metadata(plan_name, md)
    if user:
        hints = user.pop("hints", None)
        out.update(user)
        if isinstance(hints, Mapping):
            out["hints"].update(hints)
    return out


def hinted_fields(obj: Any) -> list[str]:
    """The data keys a device hints (its readback), falling back to its name."""
    try:
        fields = list(obj.hints["fields"])
    except (AttributeError, KeyError, TypeError):
        fields = []
    return fields or [device_name(obj)]
