"""``shadow_compare``: the plan behind shadow mode, with the plans' argument checks and metadata.

The comparison itself (what "agree" means, the report, the run layout) lives in
``daqbridge.bridge._shadow`` so the ``daqbridge shadow`` command, the scripted
``ShadowComparison`` and this plan share one definition. This wrapper adds what every plan in
this package promises: arguments checked before anything is read (a PlanArgumentError naming
the argument), and the common start metadata (``daqbridge_devices`` says which device is which
stack, ``plan_args`` by device name).
"""

import inspect
from collections.abc import Generator, Mapping
from typing import Any

from bluesky.protocols import Readable

from daqbridge.errors import ConfigError
from daqbridge.plans._capabilities import is_legacy_device
from daqbridge.plans._checks import plan_error, require_count, require_device, require_positive
from daqbridge.plans._metadata import device_name, start_metadata

__all__ = ["shadow_compare"]

PLAN = "shadow_compare"


def _engine() -> Any:
    try:
        from daqbridge.bridge import _shadow
    except ImportError as exc:  # pragma: no cover - the runtime ships it
        raise plan_error(
            PLAN,
            "(module)",
            "daqbridge.bridge._shadow",
            "cannot be imported",
            fix=f"reinstall daqbridge ({exc}).",
        ) from exc
    return _shadow


def _units(device: Any, key: str) -> str | None:
    try:
        described = device.describe()
        if inspect.isawaitable(described):
            # an ophyd-async device describes itself in a coroutine, which this plan's body (on
            # the RunEngine's loop) cannot wait for; the recorded descriptor still has the units
            if inspect.iscoroutine(described):
                described.close()
            return None
        return described[key].get("units") or None
    except Exception:  # noqa: BLE001 - units only sharpen the check
        return None


def shadow_compare(
    legacy_device: Readable,
    native_device: Readable,
    num: int,
    *,
    tolerance: float = 0.0,
    rtol: float = 0.0,
    native_field: str | None = None,
    legacy_field: str | None = None,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, Any]:
    """Read both drivers of one instrument ``num`` times and record how far apart they are.

    Each event holds both readings and ``<native>_minus_<legacy>``; readings agree when
    ``|native - legacy| <= tolerance + rtol * |native|``. Returns the ``ShadowReport``
    (``RE(plan)`` hands it back with ``call_returns_result=True``; otherwise
    ``ShadowReport.from_run(catalog[uid])`` rebuilds it).
    """
    engine = _engine()
    require_device(PLAN, "legacy_device", legacy_device, "a legacy device", Readable)
    require_device(PLAN, "native_device", native_device, "a native device", Readable)
    if not is_legacy_device(legacy_device):
        raise plan_error(
            PLAN,
            "legacy_device",
            legacy_device,
            f"is not a legacy device ({type(legacy_device).__name__} is no LegacyDevice)",
            fix="pass the legacy twin (e.g. runtime.devices['sim_meter_legacy']).",
        )
    if is_legacy_device(native_device):
        raise plan_error(
            PLAN,
            "native_device",
            native_device,
            "is a LegacyDevice, not a native device",
            fix="pass the native device (e.g. runtime.devices['sim_meter']).",
        )
    num = require_count(PLAN, "num", num)
    tolerance = require_positive(PLAN, "tolerance", tolerance, allow_zero=True)
    rtol = require_positive(PLAN, "rtol", rtol, allow_zero=True)
    fields = {}
    for arg, device, given in (
        ("native_field", native_device, native_field),
        ("legacy_field", legacy_device, legacy_field),
    ):
        if given is not None:
            keys = engine.describe_keys(device)  # without awaiting: ophyd-async devices too
            if given not in keys:
                raise plan_error(
                    PLAN,
                    arg,
                    given,
                    f"is not a field of {device_name(device)!r}",
                    limit=keys,
                    fix=f"choose one of {keys}.",
                )
            fields[arg] = given
            continue
        try:
            fields[arg] = engine.main_field(device)
        except ConfigError as exc:
            raise plan_error(
                PLAN, arg, None, f"cannot be chosen automatically: {exc.what}", fix=exc.fix
            ) from None
    nu = _units(native_device, fields["native_field"])
    lu = _units(legacy_device, fields["legacy_field"])
    if nu and lu and nu != lu:
        raise plan_error(
            PLAN,
            "legacy_device",
            legacy_device,
            f"reads {fields['legacy_field']} in {lu!r} but the native device reads "
            f"{fields['native_field']} in {nu!r}",
            fix='configure both drivers for the same units (the 1830-C: units = "W").',
        )

    _md = start_metadata(
        PLAN,
        {
            "legacy_device": legacy_device,
            "native_device": native_device,
            "num": num,
            "tolerance": tolerance,
            "rtol": rtol,
            **fields,
        },
        detectors=[native_device, legacy_device],
        dimensions=[(["time"], "primary")],
        md=md,
    )
    return (
        yield from engine.shadow_compare_plan(
            legacy_device,
            native_device,
            num,
            tolerance,
            rtol=rtol,
            native_field=fields["native_field"],
            legacy_field=fields["legacy_field"],
            md=_md,
        )
    )
