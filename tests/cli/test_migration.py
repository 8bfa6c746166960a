"""``daqbridge migration status`` on a simulated lab with a real catalog.

The shadow runs are recorded by the runtime (real RunEngine, real Tiled catalog on SQLite, the
1830-C simulator behind both drivers); the status must count exactly those runs, their compared
points and disagreements, and say what changes at the switch as the running devices show it.
"""

from __future__ import annotations

import itertools
import json

import bluesky.plans as bp
import pytest

from daqbridge.bridge import shadow_compare_plan
from daqbridge.catalog import DATA_ENV
from daqbridge.cli import main
from daqbridge.cli._migration import switch_changes
from daqbridge.config import load_profile
from daqbridge.runtime import Runtime
from daqbridge.sim import Newport1830CSimulator, register, unregister
from tests.cli.conftest import fresh_data_dir, unique

PROFILE = """
[lab]
name = "migration status lab"
data_dir = "unused"

[simulation]
enabled = true
speed = 100.0

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "shadow"
port = "sim://newport1830c?name={meter}"
polling_rate_hz = 0

[instruments.legacy]
lease_timeout_s = 7.0

[[instruments]]
id = "rot"
driver = "elliptec"
stack = "legacy"
port = "sim://elliptec?name={rot}"
polling_rate_hz = 0

[instruments.elliptec]
addresses = [{{ address = "2", name = "hwp", low_limit = -90.0, high_limit = 90.0 }}]
"""


class Light:
    """The meter's optical input: constant, except one reading (counted from ``arm``)."""

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self.glitch_at: int | None = None
        self._calls = itertools.count()

    def arm(self, glitch_at: int) -> None:
        self._calls = itertools.count()
        self.glitch_at = glitch_at

    def __call__(self) -> float:
        return 2 * self.watts if next(self._calls) == self.glitch_at else self.watts


def _keys(device) -> set[str]:
    from daqbridge.devices.core import maybe_sync  # an ophyd-async device describes in coroutines

    return set(maybe_sync(device.describe(), device=device)) | set(
        maybe_sync(device.describe_configuration(), device=device)
    )


@pytest.fixture(scope="module")
def recorded_lab(cli_catalog_template, tmp_path_factory):
    """(profile, data dir, data keys of the running devices) after two shadow runs and one
    other run; recorded once for the module (a lab start costs seconds)."""
    tmp = tmp_path_factory.mktemp("migration-status")
    data = fresh_data_dir(cli_catalog_template, tmp / "data")
    light = Light(1.5e-6)
    meter_sim = unique("meter")
    register(meter_sim, Newport1830CSimulator(optical_input=light, noise=0, speed=100))
    profile = tmp / "lab.toml"
    profile.write_text(PROFILE.format(meter=meter_sim, rot=unique("rot")))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(DATA_ENV, str(data))
            with Runtime.from_profile(profile) as rt:
                meter, twin = rt.devices["meter"], rt.devices["meter_legacy"]
                rt.run(shadow_compare_plan(twin, meter, 4))
                # pair 3 is reads 6 and 7: whichever driver reads second sees twice the light
                light.arm(glitch_at=7)
                rt.run(shadow_compare_plan(twin, meter, 5, rtol=1e-3))
                rt.run(bp.count([meter, twin], 3))  # not a comparison: not counted
                keys = {
                    "meter": _keys(meter),
                    "meter_legacy": _keys(twin),
                    "rot": _keys(rt.devices["rot"]) | _keys(rt.devices["rot_hwp"]),
                }
    finally:
        unregister(meter_sim)
    return profile, data, keys


@pytest.fixture
def lab(recorded_lab, monkeypatch):
    """The recorded lab, with this test's environment pointing at its data."""
    profile, data, keys = recorded_lab
    monkeypatch.setenv(DATA_ENV, str(data))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)
    return profile, keys


def test_status_counts_shadow_runs_and_shows_what_the_switch_changes(lab, capsys):
    profile, keys = lab
    assert main(["migration", "status", "--profile", str(profile)]) == 0
    out = capsys.readouterr().out
    meter, rot = out.split("\nrot (elliptec)")
    assert "meter (newport1830c): stack shadow" in meter
    assert "shadow agreement: 2 shadow run(s), 9 points compared, 1 disagreement(s)" in meter
    assert "shadow twins removed: meter_legacy" in meter
    # the legacy twin records the native device's keys (issue 18): from the running lab
    assert {k.replace("meter_legacy", "meter", 1) for k in keys["meter_legacy"]} == keys["meter"]
    assert "data keys" not in meter
    legacy_only = "settings only the legacy driver reads (kept for a switch back): "
    assert f"{legacy_only}polling_rate_hz = 0.0, legacy.lease_timeout_s = 7.0" in meter
    assert ": stack legacy" in rot and "shadow agreement: no shadow runs yet" in rot
    # the legacy mount records the native mount's keys with the profile's limits, and the
    # legacy bus, like the native one, records nothing and is not served: no change at all
    assert keys["rot"] == {"rot_hwp", "rot_hwp_setpoint", "rot_hwp_velocity"}
    for change in ("data keys", "limits:", "PVs"):
        assert change not in rot, rot
    assert "low_limit" not in rot  # both stacks apply the mount's limits


def test_status_as_json_and_for_one_instrument(lab, capsys):
    profile, _ = lab
    assert main(["migration", "status", "--profile", str(profile), "--json", "meter"]) == 0
    report = json.loads(capsys.readouterr().out)
    (meter,) = report["instruments"]
    assert meter["id"] == "meter" and meter["stack"] == "shadow"
    agreement = meter["agreement"]
    assert (agreement["runs"], agreement["points"], agreement["disagreements"]) == (2, 9, 1)
    assert main(["migration", "status", "--profile", str(profile), "metre"]) == 1
    assert "did you mean 'meter'?" in capsys.readouterr().err


def test_what_the_native_driver_refuses_is_said_before_the_switch():
    """Built offline: the real lab's port (absent on this machine) is never opened."""
    profile = load_profile(
        """
[lab]
name = "real lab"

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "legacy"
port = "/dev/serial/by-id/usb-not-on-this-machine"

[instruments.newport1830c]
units = "dBm"
"""
    )
    changes = switch_changes(profile, profile.instrument("meter"))
    (problem,) = changes.problems
    assert problem.startswith("the native driver refuses this entry:") and "units" in problem


@pytest.mark.parametrize("instrument", ["sim_laser", "sim_rotators"])
def test_the_simulated_lab_switches_without_a_change_of_keys_pvs_or_limits(instrument):
    """The legacy adapter records the native names under the profile's limits (issue 18), so
    the switch changes nothing a plan or the IOC sees, and no limit is called native-only."""
    profile = load_profile(None)
    changes = switch_changes(profile, profile.instrument(instrument))
    seen = (changes.data_keys_gone, changes.data_keys_new, changes.pvs_gone, changes.pvs_new)
    assert seen == ([], [], [], []) and changes.limits == [] and changes.problems == []
    assert changes.native_only == []


def test_a_setting_only_one_stack_reads_is_still_listed():
    """The laser's polling rate drives the legacy poller only; the bus's XON/XOFF flow control
    is applied by the native driver only (the legacy Elliptec driver opens its port without)."""
    profile = load_profile(None)
    laser = switch_changes(profile, profile.instrument("sim_laser"))
    assert laser.legacy_only == ["polling_rate_hz = 1.0"]
    bus = profile.instrument("sim_rotators")
    bus = type(bus).model_validate(
        {**bus.model_dump(exclude_unset=True), "flow_control": "xonxoff"}
    )
    changes = switch_changes(profile, bus)
    assert changes.native_only == ["flow_control = 'xonxoff'"] and changes.legacy_only == []
