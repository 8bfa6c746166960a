"""The start-document metadata every daqbridge plan writes.

Why a module for it: a run found in the catalog months later must say how it was made
(``plan_name``, ``plan_args`` that can be typed into ``daqbridge run`` again), what was measured
(``detectors``, ``motors``), and, during the migration, which driver stack produced each device's
numbers (``daqbridge_devices``: ``{name: "native" | "legacy"}``), because a legacy and a native
reading of the same instrument can disagree and the comparison must be possible afterwards.
``hints.dimensions`` tells tables and plots (BestEffortCallback, the catalog viewer) what the
independent axis is. The profile name/path needs nothing here: the runtime puts it into
``RE.md``, and the RunEngine merges ``RE.md`` into every start document.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["device_name", "device_stack", "device_stacks", "jsonable", "start_metadata"]

NATIVE = "native"
LEGACY = "legacy"


def device_name(obj: Any) -> str:
    return str(getattr(obj, "name", None) or repr(obj))


def _is_legacy_type(obj: Any) -> bool:
    # Import lazily: the plans must keep working (as native-only) if the adapter module is absent
    # or broken, and importing it must not pull the legacy stack into every plan import.
    try:
        from daqbridge.devices.legacy_adapter import LegacyDevice
    except Exception:  # noqa: BLE001 - adapter missing: decide by class name below
        LegacyDevice = None  # noqa: N806
    if LegacyDevice is not None and isinstance(obj, LegacyDevice):
        return True
    return any(cls.__name__ == "LegacyDevice" for cls in type(obj).__mro__)


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
    node = obj
    while getattr(node, "parent", None) is not None:
        node = node.parent
    return node


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
    if md:
        user = dict(md)
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
