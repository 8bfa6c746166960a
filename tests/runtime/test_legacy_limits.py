"""The profile's limits hold on the legacy stack too (issue 18 item 2): an Elliptec bus run by
the legacy driver, with mount c limited to +-90 deg, refuses 95 deg through ``bps.mv`` and
``polarization_scan`` before a byte is sent (checked against the bus simulator's own mount)."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import pytest

from daqbridge.devices.core import call_sync
from daqbridge.errors import PlanArgumentError, ValueRejected
from daqbridge.plans import polarization_scan
from daqbridge.runtime import Runtime

ELLIPTEC_LEGACY = """
[[instruments]]
id = "rotators"
driver = "elliptec"
stack = "legacy"
port = "pty"
polling_rate_hz = 2.0
timeout = 5.0  # generous: a loaded CI machine has delayed the first IN reply past 1 s
sim = { options = { enforce_command_spacing = false } }

[instruments.elliptec]
addresses = [
    { address = "2", name = "a" },
    { address = "8", name = "c", low_limit = -90.0, high_limit = 90.0 },
]
"""


def test_legacy_mount_keeps_the_profiles_limits(runtime_data, runtime_profile):
    path = runtime_profile(stage=None, meter="legacy", extra=ELLIPTEC_LEGACY)
    with Runtime.from_profile(path) as rt:
        mount, meter = rt["rotators_c"], rt["meter"]
        bus = rt.simulation.simulator("rotators")
        before = bus.position_deg(8)
        with pytest.raises(ValueRejected, match=r"95 is outside the limits \[-90.0, 90.0\]"):
            rt.RE(bps.mv(mount, 95))
        with pytest.raises((ValueRejected, PlanArgumentError), match=r"95"):
            rt.RE(polarization_scan(mount, meter, [0, 95]))
        assert bus.position_deg(8) == before  # nothing reached the mount
        described = call_sync(mount.describe(), device=mount)[mount.readback.name]
        assert described["limits"]["control"] == {"low": -90.0, "high": 90.0}
