"""One event of a step plan: what is read, and in how many messages."""

from __future__ import annotations

import bluesky.preprocessors as bpp
from bluesky import RunEngine
from ophyd.sim import SynAxis, SynGauss

from daqbridge.plans._points import read_point


def test_a_point_reads_its_detectors_and_extras_in_one_message():
    """bluesky >= 1.16 reads the objects of one read message concurrently: instruments on
    different lines then answer at the same time. The event still holds every reading."""
    motor = SynAxis(name="motor")
    one = SynGauss("one", motor, "motor", center=0, Imax=1)
    two = SynGauss("two", motor, "motor", center=0, Imax=2)
    RE = RunEngine({}, context_managers=[])  # noqa: N806 - bluesky's name
    reads: list[tuple] = []
    RE.msg_hook = lambda msg: reads.append((msg.obj, *msg.args)) if msg.command == "read" else None
    events: list[dict] = []
    RE(
        bpp.run_wrapper(read_point([one], [two, motor])),
        lambda name, doc: events.append(doc) if name == "event" else None,
    )
    assert reads == [(one, two, motor)]
    (event,) = events
    assert set(event["data"]) == {"one", "two", "motor", "motor_setpoint"}
    assert event["data"]["two"] == 2.0  # each its own reading, taken at this point
