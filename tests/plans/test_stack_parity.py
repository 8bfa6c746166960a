"""The same plan on the same instrument records the same data on either driver stack (issue 18,
items 1 and 3): every lab plan runs on the simulated lab with the MaiTai, the 1830-C and the
Elliptec mounts native, then legacy, and the descriptors read back from each lab's Tiled catalog
are compared; a setting moved with the same line on both stacks reaches the instrument.

Two labs run side by side in this process (copies of the embedded profile, the second with
``daqbridge config switch``'s own edit applied to those three entries), each started once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from bluesky import plan_stubs as bps

from daqbridge.cli._plan_args import build_plan_call, resolve_plan
from daqbridge.config import switch_stack
from daqbridge.plans import PLANS, polarization_scan, raster

pytestmark = pytest.mark.slow  # two simulated labs start (about a minute on 2 loaded cores)

SIM_PROFILE = Path(__file__).parents[2] / "daqbridge" / "profiles" / "sim.toml"
ON_BOTH_STACKS = ("sim_laser", "sim_meter", "sim_rotators")
"""The instruments that have a native and a legacy driver (MaiTai, 1830-C, Elliptec bus)."""
STACKS = ("native", "legacy")
ONE_STACK_ONLY = ("sim_camera", "sim_dmm")

NOT_COMPARED = {
    "shadow_compare": "it compares the two stacks itself: it needs a native and a legacy device",
    "record_legacy": "it records a legacy driver's own stream, which has no native counterpart",
    "exposure_series": "its one device, the PVCAM camera, has no legacy driver",
    "fly_raster": "it samples the native meter's wire signal during a row; a legacy meter is "
    "refused before the run (tests/plans/test_fly_raster.py)",
    "fly_polarization": "the same: it samples the native meter's wire signal while the mount "
    "turns (tests/plans/test_fly_polarization.py)",
}
"""Lab plans with no instrument that runs on both stacks, and why."""

IGNORED_FIELDS = {"source"}
"""``source`` names the driver and its command ('legacy:sim_laser/power' against 'sim_laser
(MaiTai) on /dev/pts/3: READ:POWER?'): it says where a value came from, which is exactly what
differs between the stacks. Every other descriptor field must be equal."""


def _profile(stack: str, directory: Path) -> Path:
    """The embedded profile with the three instruments on ``stack``, switched the way a lab
    switches them. sim:// simulators are named per process, so this copy's are renamed (the
    plan tests' shared lab may run in this process too)."""
    document = tomlkit.parse(SIM_PROFILE.read_text().replace("?name=", f"?name=parity_{stack}_"))
    # Instruments on one stack only are the same in both labs; the camera cannot be opened twice.
    entries = document["instruments"]
    for i in reversed(range(len(entries))):
        if entries[i]["id"] in ONE_STACK_ONLY:
            del entries[i]
    path = directory / f"{stack}.toml"
    path.write_text(tomlkit.dumps(document))
    for instrument in ON_BOTH_STACKS:
        switch_stack(path, instrument, stack)
    return path


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from daqbridge.runtime import Runtime

    directory = tmp_path_factory.mktemp("parity")
    started: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DAQBRIDGE_DATA", raising=False)
        try:
            for stack in STACKS:
                rt = Runtime.from_profile(
                    _profile(stack, directory), data_dir=directory / stack, connect_timeout=30
                )
                started[stack] = rt
                # The lab's routine before measuring, the same lines on both stacks: emission
                # on, and the meter's attenuator in (the laser's watts exceed its top range).
                rt.RE(bps.mv(rt["sim_laser"].emission, 1))
                rt.RE(bps.mv(rt["sim_meter"].attenuator, 1))  # ophyd-async or legacy
            yield started
        finally:
            for rt in started.values():
                report = rt.close(reason="test done")
                assert report.clean, report.format()


def _wavelength_scan(rt: Any) -> Any:
    # Through `daqbridge run`'s own argument checks: the legacy laser is accepted as the native
    # one is (issue 12: it was refused as "cannot be moved").
    call = build_plan_call(
        resolve_plan("wavelength_scan"), ["sim_laser", "sim_meter", "750", "850", "3"], rt.devices
    )
    return call.make()


def _polarization_scan(rt: Any) -> Any:
    return polarization_scan(
        rt["sim_rotators_c"], rt["sim_meter"], [0.0, 30.0], extra_rotators=[rt["sim_rotators_a"]]
    )


def _raster(rt: Any) -> Any:
    return raster(
        rt["sim_rotators_a"], rt["sim_rotators_b"], rt["sim_meter"], [0, 20, 2], [0, 20, 2]
    )


RUNS: dict[str, Callable[[Any], Any]] = {
    "wavelength_scan": _wavelength_scan,
    "polarization_scan": _polarization_scan,
    "raster": _raster,
}


def test_every_lab_plan_is_compared_or_says_why_not() -> None:
    assert set(RUNS) | set(NOT_COMPARED) == set(PLANS)
    assert not set(RUNS) & set(NOT_COMPARED)


BASELINE_ONLY_LEGACY = "sim_rotators"
"""The legacy Elliptec bus is a readable device (its mounts' positions, for monitoring the bus);
the native bus is not, so the default baseline (every readable device) reads it on the legacy
stack only. Its readings are its mounts' (same sources), which both stacks record under the
mounts' keys; the baseline should leave such a device out (reported to the lead)."""


def _without(desc: dict[str, Any], device: str) -> dict[str, Any]:
    """The descriptor without what ``device`` recorded (its keys, hints and configuration)."""
    desc = dict(desc)
    desc["data_keys"] = {
        k: v for k, v in desc["data_keys"].items() if v.get("object_name") != device
    }
    for part in ("hints", "configuration", "object_keys"):
        desc[part] = {k: v for k, v in desc.get(part, {}).items() if k != device}
    return desc


def _recorded(rt: Any, uid: str) -> dict[str, Any]:
    """What the catalog holds about the run's data: per stream, each data key's descriptor
    (``source`` left out), the hints, and each device's configuration keys and their
    descriptors."""
    rt.catalog.flush(timeout=30)
    run = rt.catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    out: dict[str, Any] = {}
    for desc in run.descriptors:
        stream = desc["name"]
        if stream == "baseline":
            desc = _without(desc, BASELINE_ONLY_LEGACY)
        assert stream not in out, f"two descriptors of stream {stream}"
        out[stream] = {
            "data_keys": {
                key: {f: v for f, v in entry.items() if f not in IGNORED_FIELDS}
                for key, entry in desc["data_keys"].items()
            },
            "hints": desc.get("hints", {}),
            "configuration": {
                device: {
                    key: {f: v for f, v in entry.items() if f not in IGNORED_FIELDS}
                    for key, entry in conf.get("data_keys", {}).items()
                }
                for device, conf in desc.get("configuration", {}).items()
            },
            "object_keys": desc.get("object_keys", {}),
        }
    return out


@pytest.mark.parametrize("plan", sorted(RUNS))
def test_the_same_plan_records_the_same_keys_on_both_stacks(labs: dict[str, Any], plan: str):
    recorded = {}
    for stack, rt in labs.items():
        (uid,) = rt.RE(RUNS[plan](rt))
        recorded[stack] = _recorded(rt, uid)
    native, legacy = recorded["native"], recorded["legacy"]
    assert native["primary"]["data_keys"], "the native run recorded nothing"
    for stream in native.keys() | legacy.keys():
        assert stream in native and stream in legacy, f"stream {stream} on one stack only"
        for part in ("data_keys", "hints", "configuration", "object_keys"):
            assert legacy[stream][part] == native[stream][part], (
                f"{plan}: {stream} {part} differ between the stacks "
                f"(native, then legacy):\n{native[stream][part]}\n{legacy[stream][part]}"
            )


@pytest.mark.parametrize("stack", STACKS)
def test_the_shutter_closes_with_the_same_line_on_both_stacks(labs: dict[str, Any], stack: str):
    rt = labs[stack]
    laser = rt["sim_laser"]
    simulated = rt.simulation.simulator("sim_laser")
    shown: list[Any] = []

    def close_and_read() -> Any:
        yield from bps.mv(laser.shutter, 0)
        shown.append((yield from bps.rd(laser.shutter)))

    rt.RE(bps.mv(laser.shutter, 1))  # a wavelength scan leaves it closed
    assert simulated.shutter_open
    try:
        rt.RE(close_and_read())
        assert simulated.shutter_open is False  # the laser itself closed it
        assert shown == [0]
    finally:
        rt.RE(bps.mv(laser.shutter, 1))
    assert simulated.shutter_open is True


@pytest.mark.parametrize("stack", STACKS)
def test_a_mount_velocity_is_set_with_the_same_line_on_both_stacks(
    labs: dict[str, Any], stack: str
):
    rt = labs[stack]
    mount = rt["sim_rotators_c"]
    simulated = rt.simulation.simulator("sim_rotators")
    shown: list[Any] = []

    def slow_down_and_read() -> Any:
        yield from bps.mv(mount.velocity, 60)
        shown.append((yield from bps.rd(mount.velocity)))

    try:
        rt.RE(slow_down_and_read())
        assert simulated._mount(8).velocity_pct == 60  # what the mount itself was told
        assert shown == [60]
    finally:
        rt.RE(bps.mv(mount.velocity, 100))
    assert simulated._mount(8).velocity_pct == 100
