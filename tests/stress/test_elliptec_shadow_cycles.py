"""Start and stop the simulated lab's Elliptec bus in shadow, again and again (issue 18, item 8).

In shadow the legacy driver and the native mounts share each address's inbox on one bus. Two
faults were seen on the simulated lab: a start-up that failed with ``no PO packet from address 2
... after b'2gp'`` (the native connect emptied the inbox the legacy poll was about to read), and
clean shutdowns that logged "the bus was closed ... restarting" (the native phase closed the bus
reader the legacy driver still polled through). Every cycle here must start, stop cleanly and
log no warning at all.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.stress import support

# The bus of profiles/sim.toml, in shadow; the legacy twin polls fast so that a poll is in
# flight at every moment of start-up and shutdown.
SHADOW_BUS = """
[lab]
name = "elliptec shadow cycles {tag}"
data_dir = "unused"

[simulation]
enabled = true
speed = 20.0

[[instruments]]
id = "sim_rotators"
driver = "elliptec"
stack = "shadow"
port = "pty"
polling_rate_hz = 10.0
timeout = 5.0  # a stolen reply never comes, however long the wait; a loaded host is only slow
sim = {{ addresses = [2, 3, 8] }}

[instruments.elliptec]
addresses = [
    {{ address = "2", name = "a" }},
    {{ address = "3", name = "b" }},
    {{ address = "8", name = "c", low_limit = -90.0, high_limit = 90.0 }},
]
"""


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("daqbridge"):
            self.messages.append(f"{record.name}: {record.getMessage()}")


def _cycles(n: int, stress_data, tmp_path) -> None:
    from daqbridge.runtime import Runtime

    handler = _Warnings()
    root = logging.getLogger("daqbridge")
    root.addHandler(handler)
    try:
        for i in range(n):
            profile = tmp_path / f"shadow_bus_{i}.toml"
            profile.write_text(SHADOW_BUS.format(tag=uuid.uuid4().hex[:6]))
            rt = Runtime.from_profile(
                profile, data_dir=stress_data(f"cycle{i}"), connect_timeout=30.0
            )
            assert {"sim_rotators_a", "sim_rotators_a_legacy"} <= set(rt.devices)
            report = rt.close(reason=f"cycle {i}")
            assert report.clean, report.format()
            assert handler.messages == [], f"cycle {i}: {handler.messages}"
    finally:
        root.removeHandler(handler)
    support.report("elliptec shadow start/stop", [f"{n} cycles, all clean, no warning"])


@pytest.mark.stress
def test_twenty_shadow_start_stop_cycles_of_the_elliptec_bus(stress_data, tmp_path):
    _cycles(20, stress_data, tmp_path)


@pytest.mark.stress
@pytest.mark.ci_short
def test_three_shadow_start_stop_cycles_of_the_elliptec_bus(stress_data, tmp_path):
    _cycles(3, stress_data, tmp_path)
