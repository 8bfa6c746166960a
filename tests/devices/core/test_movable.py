"""Unit tier of the positioner core: a made-up one-axis slide on :class:`ReplayPort`.

Each test states the exact bytes, and the leases they travel in, that a behaviour costs: the
move command in one lease, every motion-done poll in a lease of its own, nothing at all for a
refused target. ophyd-async's mock signals cover the timeout arithmetic, which needs no bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from functools import cached_property
from typing import Any, ClassVar

import pytest
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.testing import set_mock_value

from daqbridge.devices.core import (
    Exchange,
    ReplayPort,
    WireCommand,
    WireDevice,
    WireMotion,
    WireMovableLogic,
    WirePositioner,
    wire_signal_r,
    wire_target_signal,
)
from daqbridge.devices.core._movable import END_MARGIN_S, trapezoid_time
from daqbridge.errors import (
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    ReplyError,
    ValueRejected,
)

IDN = (b"*IDN?\n", b"ACME,SLIDE-1\n")


def flag(reply: str) -> bool:
    if reply not in ("0", "1"):
        raise ValueError(reply)
    return reply == "1"


class Slide(WireDevice, WirePositioner):
    """A made-up slide: ``P?`` position, ``V?`` velocity, ``G<x>`` go, ``M?`` done, ``S`` stop."""

    model: ClassVar[str] = "SLIDE-1"

    def __init__(self, port: Any, *, move_timeout: float | None = None, backoff=None) -> None:
        self.move_timeout = move_timeout
        self.backoff = backoff or (0.0, 0.001)
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.readback = wire_signal_r(
                float, self, WireCommand(query="P?", parse=float, units="mm", precision=3)
            )
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.setpoint = wire_target_signal(
                self, "G", lambda v: self.movable_logic.start(v), units="mm", limits=(0, 10)
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.velocity = wire_signal_r(float, self, WireCommand(query="V?", parse=float))
        super().__init__(port, name="slide", timeout=0.2)

    @cached_property
    def movable_logic(self) -> WireMovableLogic:
        return WireMovableLogic(
            setpoint=self.setpoint,
            readback=self.readback,
            axis=self,
            motion=WireMotion(
                move="G{}",
                done="M?",
                is_done=flag,
                stop="S",
                format_target=str,
                backoff=self.backoff,
            ),
            limits=(0.0, 10.0),
            velocity=self.velocity,
            move_timeout=self.move_timeout,
        )

    async def identify(self, x: Exchange) -> None:
        if "SLIDE-1" not in await x.query("*IDN?"):
            raise IdentityMismatch("not a slide", instrument=self.name)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """One test body on a fresh loop, bounded: a hang fails instead of stalling the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


def move_slide(port: ReplayPort, target: float, **slide: Any) -> None:
    """Connect a slide on ``port`` and move it to ``target`` (a fresh loop, bounded), then
    check that every exchange of the port's transcript was used, in order."""

    async def body() -> None:
        s = Slide(port, **slide)
        await s.connect()
        await s.set(target)

    run(body())
    port.assert_done()


async def until(predicate, timeout: float = 5.0) -> None:
    """Wait on the loop for a condition (other tasks run meanwhile), bounded."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0)


def poll(done: bool, position: str) -> list[tuple[bytes, bytes | None]]:
    return [(b"M?\n", b"1\n" if done else b"0\n"), (b"P?\n", position.encode() + b"\n")]


# velocity for the calculated timeout, then the set's starting position (StandardMovable order)
START = [(b"P?\n", b"0.000\n"), (b"V?\n", b"2.0\n")]


def test_a_move_is_one_lease_for_the_command_then_one_lease_per_poll():
    port = ReplayPort(
        [
            IDN,
            *START,
            (b"G7.5\n", None),
            *poll(False, "3.100"),
            *poll(True, "7.49995"),
            (b"P?\n", b"7.49995\n"),  # locate() asks the controller again
        ],
        url="replay://slide",
    )
    seen: list[float] = []

    async def body():
        slide = Slide(port)
        await slide.connect()
        status = slide.set(7.5)
        status.watch(lambda current=None, **_: seen.append(current))
        await status
        return await slide.locate()

    location = run(body())
    port.assert_done()
    assert port.transactions[-4:-1] == [b"G7.5\n", b"M?\nP?\n", b"M?\nP?\n"]
    # The readback is what the controller reported, not the target; the setpoint is the target.
    assert location == {"setpoint": 7.5, "readback": 7.49995}
    assert 3.1 in seen  # watchers saw the position of the poll in between


def test_the_port_is_free_between_two_polls():
    port = ReplayPort(
        [
            IDN,
            *START,
            (b"G5.0\n", None),
            *poll(False, "1.000"),
            (b"V?\n", b"2.0\n"),  # another transaction, while the slide travels
            *poll(True, "5.000"),
        ],
        url="replay://slide",
    )

    async def body():
        slide = Slide(port, backoff=(0.0, 0.2))
        await slide.connect()
        status = slide.set(5)
        await until(lambda: port.used == 6)  # the first poll was answered
        velocity = await slide.velocity.get_value()
        await status
        return velocity

    assert run(body()) == 2.0
    port.assert_done()
    assert port.transactions[-4:] == [b"G5.0\n", b"M?\nP?\n", b"V?\n", b"M?\nP?\n"]


@pytest.mark.parametrize("target", [10.5, -0.1, float("nan"), "5\nG9", None])
def test_a_target_outside_the_soft_limits_is_refused_before_any_byte(target):
    port = ReplayPort([IDN], url="replay://slide")

    async def body():
        slide = Slide(port)
        await slide.connect()
        with pytest.raises(ValueRejected) as err:
            slide.set(target)  # synchronous: no status, no task, no position query
        with pytest.raises(ValueRejected):
            await slide.check_value(target)
        return err.value

    err = run(body())
    assert err.instrument == "slide"
    port.assert_done()
    assert port.transactions == [b"*IDN?\n"]


def test_stop_sends_the_stop_command_once_and_fails_the_move():
    port = ReplayPort(
        [IDN, *START, (b"G9.0\n", None), *poll(False, "2.000"), (b"S\n", None)],
        url="replay://slide",
    )

    async def body():
        slide = Slide(port, backoff=(0.0, 0.2))
        await slide.connect()
        status = slide.set(9)
        await until(lambda: port.used == 6)
        await slide.stop()
        with pytest.raises(RuntimeError, match="was stopped"):
            await status
        assert not slide.movable_logic.moving

    run(body())
    port.assert_done()  # one S: the cancelled move did not send a second one
    assert port.transactions[-1] == b"S\n"


def test_a_move_past_its_timeout_is_stopped_and_fails():
    port = ReplayPort(
        [IDN, (b"P?\n", b"0.000\n"), (b"G9.0\n", None), *poll(False, "0.500"), (b"S\n", None)],
        url="replay://slide",
    )

    async def body():
        slide = Slide(port, move_timeout=0.0)
        await slide.connect()
        await slide.set(9)

    with pytest.raises(InstrumentTimeout, match=r"did not reach 9 .*now at 0\.5.*stopped \(S\)"):
        run(body())
    port.assert_done()


def test_a_garbled_poll_stops_the_axis_it_lost_track_of():
    port = ReplayPort(
        [IDN, *START, (b"G4.0\n", None), (b"M?\n", b"#\n"), (b"S\n", None)],
        url="replay://slide",
    )

    async def body():
        slide = Slide(port)
        await slide.connect()
        await slide.set(4)

    with pytest.raises(ReplyError, match="M?"):
        run(body())
    port.assert_done()


def test_timeout_from_distance_and_velocity_on_mock_signals():
    async def body():
        slide = Slide(ReplayPort([], url="replay://slide"))
        await slide.connect(mock=True)
        set_mock_value(slide.velocity, 2.0)
        logic = slide.movable_logic
        # no acceleration given: distance / velocity, doubled, plus 10 s
        assert await logic.calculate_timeout(1.0, 9.0) == 2.0 * (8.0 / 2.0) + 10.0
        set_mock_value(slide.velocity, 0.0)  # a velocity that cannot be right: no deadline
        assert await logic.calculate_timeout(1.0, 9.0) is None
        logic.move_timeout = 3.0
        assert await logic.calculate_timeout(1.0, 9.0) == 3.0

    run(body())


def test_a_newer_move_supersedes_the_older_without_stopping_the_axis():
    port = ReplayPort(
        [
            IDN,
            *START,
            (b"G5.0\n", None),
            *poll(False, "1.000"),
            # the second set: its starting position comes from the readback the first move
            # is watching, and its timeout from the velocity the slide reported for the first
            # move (no query for either)
            (b"G8.0\n", None),
            *poll(True, "8.000"),
        ],
        url="replay://slide",
    )

    async def body():
        slide = Slide(port, backoff=(0.0, 0.2))
        await slide.connect()
        first = slide.set(5)
        await until(lambda: port.used == 6)
        await slide.set(8)
        with pytest.raises(InstrumentError, match="superseded"):
            await first

    run(body())
    port.assert_done()  # and no S: the newer move owns the axis


@pytest.mark.parametrize(
    ("distance", "velocity", "acceleration", "seconds"),
    [
        (10.0, 5.0, 20.0, 10.0 / 5.0 + 5.0 / 20.0),  # reaches 5 mm/s: 0.25 s ramps, 1.75 s flat
        (1.25, 5.0, 20.0, 0.5),  # just reaches it: two 0.25 s ramps, nothing flat
        (0.1, 5.0, 20.0, 2.0 * (0.1 / 20.0) ** 0.5),  # a triangle: never reaches 5 mm/s
        (4.0, 2.0, float("inf"), 2.0),  # no acceleration given: distance / velocity
        (1.0, 0.0, 20.0, None),  # a velocity that cannot be right
        (1.0, 5.0, 0.0, None),
    ],
)
def test_travel_time_of_the_trapezoidal_profile(distance, velocity, acceleration, seconds):
    got = trapezoid_time(distance, velocity, acceleration)
    assert got == (None if seconds is None else pytest.approx(seconds))


def recorded_pauses(monkeypatch) -> list[float]:
    """The pauses the logic asks for between two polls, in order. Its ``pause`` hook is
    replaced by one that records the pause and only yields to the loop: the test does not wait
    the pauses out (1 s in the back-offs below), and nothing else's sleeps are counted."""
    pauses: list[float] = []

    async def pause(self: WireMovableLogic, seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(WireMovableLogic, "pause", pause)
    return pauses


def test_a_poll_is_pulled_in_to_land_on_the_end_the_profile_expects(monkeypatch):
    """2 mm/s and 0.1 mm: the move should end 50 ms after the command; the back-off's next
    pause (1 s) would see it up to a second late, so the pause is cut to the expected end."""
    port = ReplayPort(
        [IDN, *START, (b"G0.1\n", None), *poll(False, "0.050"), *poll(True, "0.100")],
        url="replay://slide",
    )
    pauses = recorded_pauses(monkeypatch)

    move_slide(port, 0.1, backoff=(0.0, 1.0))
    assert len(pauses) == 1 and 0.0 < pauses[0] <= 0.05 + END_MARGIN_S


class FakeClock:
    """The logic's ``time.monotonic``: advanced by each pause and by each poll (``poll_s``, a
    poll's length on the wire), so a test states when the polls land against the profile's end
    without waiting for it."""

    def __init__(self, monkeypatch, poll_s: float) -> None:
        import types

        import daqbridge.devices.core._movable as movable

        self.now = 1000.0
        self.polls: list[float] = []
        self.pauses: list[float] = []
        monkeypatch.setattr(
            movable, "time", types.SimpleNamespace(monotonic=lambda: self.now, time=time.time)
        )
        real_poll = WireMovableLogic.poll

        async def poll(logic: WireMovableLogic, x: Exchange) -> tuple[bool, float]:
            self.polls.append(self.now)
            got = await real_poll(logic, x)
            self.now += poll_s
            return got

        async def pause(logic: WireMovableLogic, seconds: float) -> None:
            self.pauses.append(seconds)
            self.now += seconds
            await asyncio.sleep(0)

        monkeypatch.setattr(WireMovableLogic, "poll", poll)
        monkeypatch.setattr(WireMovableLogic, "pause", pause)


def test_a_poll_due_just_before_the_expected_end_lands_just_after_it(monkeypatch):
    """Expected end 50 ms after the command, polls 8 ms long, a 40 ms back-off step: the
    second poll would go out at 48 ms, 2 ms before the end, and the move would be seen a whole
    pause later. It is moved to land just after the end instead."""
    port = ReplayPort(
        [IDN, *START, (b"G0.1\n", None), *poll(False, "0.020"), *poll(True, "0.100")],
        url="replay://slide",
    )
    clock = FakeClock(monkeypatch, poll_s=0.008)

    move_slide(port, 0.1, backoff=(0.0, 0.04))
    started = clock.polls[0]  # the first poll goes out as the command does (no pause)
    assert len(clock.polls) == 2
    assert 0.050 <= clock.polls[1] - started <= 0.050 + END_MARGIN_S + 1e-9


def test_after_the_expected_end_the_back_off_starts_again_from_its_shortest_pause(monkeypatch):
    """A controller still moving when the profile says it should be done (settling): the polls
    go back to the back-off's first pauses instead of its longest, so the end is seen soon."""
    port = ReplayPort(
        [IDN, *START, (b"G0.1\n", None)]
        + poll(False, "0.010")
        + poll(False, "0.030")
        + poll(False, "0.060")
        + poll(False, "0.099")
        + poll(False, "0.100")
        + poll(True, "0.100"),
        url="replay://slide",
    )
    clock = FakeClock(monkeypatch, poll_s=0.008)

    move_slide(port, 0.1, backoff=(0.0, 0.001, 0.002, 1.0))
    started = clock.polls[0]
    # the back-off (1 ms, 2 ms), its 1 s step pulled in to just after the 50 ms end, then,
    # the controller still moving, the back-off again from its start: 1 ms, 2 ms
    assert clock.pauses[:2] == [0.001, 0.002]
    assert 0.050 <= clock.polls[3] - started <= 0.050 + END_MARGIN_S + 1e-9
    assert clock.pauses[3:] == [0.001, 0.002]


def test_without_a_reported_velocity_the_polls_follow_the_back_off(monkeypatch):
    """A mock-free slide whose velocity was never reported and a fixed timeout: nothing tells
    when the move should end, so no pause is cut and nothing extra is asked."""
    port = ReplayPort(
        [IDN, (b"P?\n", b"0.000\n"), (b"G0.1\n", None), *poll(False, "0.050")]
        + poll(True, "0.100"),
        url="replay://slide",
    )
    pauses = recorded_pauses(monkeypatch)

    move_slide(port, 0.1, move_timeout=5.0, backoff=(0.0, 1.0))
    assert pauses == [1.0]
