"""Shadow runs record no stale setpoint (issue 18, item 8).

In shadow only the native device is commanded: the legacy twin's setpoint is whatever the legacy
driver was told before, so an event carrying it (and its "difference" from the native one)
recorded a value the mount was never given. A recorded setpoint is a commanded one.
"""

from __future__ import annotations

import pytest

ELLIPTEC_SHADOW = """
[[instruments]]
id = "rot"
driver = "elliptec"
stack = "shadow"
port = "pty"
polling_rate_hz = 0.5
timeout = 5.0  # generous: a loaded machine delays replies; a stale value is wrong at any speed
sim = { options = { enforce_command_spacing = false } }

[instruments.elliptec]
addresses = [{ address = "8", name = "c" }]
"""


def test_every_setpoint_a_shadow_scan_records_is_a_target_it_commanded(
    runtime_data, runtime_profile
):
    import bluesky.plans as bp

    from daqbridge.runtime import Runtime

    path = runtime_profile(stage=None, meter=None, extra=ELLIPTEC_SHADOW)
    targets = [10.0, 30.0, 50.0]
    with Runtime.from_profile(path) as rt:
        docs: list[tuple[str, dict]] = []
        rt.RE.subscribe(lambda name, doc: docs.append((name, doc)))
        rt.RE(bp.scan([], rt["rot_c"], 10, 50, 3))
    (primary,) = [d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    events = [d["data"] for n, d in docs if n == "event" and d["descriptor"] == primary]
    assert len(events) == 3
    assert all(any(k.startswith("rot_c_legacy") for k in data) for data in events)  # the twin
    for data, target in zip(events, targets, strict=True):
        setpoints = {k: v for k, v in data.items() if k.endswith("_setpoint")}
        assert setpoints == {"rot_c_setpoint": pytest.approx(target)}, data
