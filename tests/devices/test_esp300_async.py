"""ESP300 on ophyd-async: pinned to tests/transcripts/esp300.yaml, checked against the simulator
on a real pty (its own state and motion records are the truth), in a real RunEngine, and
described exactly as the v1 axis on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.protocols import Checkable, Configurable, Locatable, Movable, Readable, Stoppable
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import RunEngineInterrupted
from ophyd.sim import det

from daqbridge.devices.core import ReplayPort
from daqbridge.devices.esp300 import ESP300Controller
from daqbridge.devices.esp300_async import ESP300ControllerAsync
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ValueRejected,
)
from daqbridge.sim import serve_pty

FAST = 50.0  # simulator speed: a 10 mm move at 5 mm/s takes 2 s device time, 40 ms real
TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "esp300.yaml"
LIMITED = {"units": "mm", "low_limit": -50, "high_limit": 50}


def transcript(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of the transcript shared with the simulator tests."""
    data = yaml.safe_load(TRANSCRIPTS.read_text())
    return [(s.encode(), None if r is None else r.encode()) for s, r in data[section]]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """One body on a fresh loop, bounded: a hang fails instead of stalling the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


def on_loop(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    return call_in_bluesky_event_loop(coro, timeout=timeout)


async def start(axis, target: float):
    """``axis.set(target)`` made on the loop (set() makes its task where it is called)."""
    return axis.set(target)


async def finish(status) -> None:
    await status


async def move(axis, target: float) -> None:
    await axis.set(target)


async def put(signal, value) -> None:
    await signal.set(value)


def until_moving(sim, axis: int):
    """A plan stub: wait (bounded) until the simulator says the axis is moving."""

    async def moving() -> None:
        async with asyncio.timeout(5.0):
            while not sim.is_moving(axis):
                await asyncio.sleep(0.002)

    return bps.wait_for([moving])


@pytest.fixture
def stage(serial_pool, RE):  # noqa: N803 - the RunEngine's loop must be running
    """``stage(**sim_options)`` -> (server, controller "sim_stage" with axes x=1 and y=2, mm,
    soft limits +-50), connected on the RunEngine's loop."""
    opened = []

    def make(*, axes=None, motor_on=False, timeout=0.5, connect=True, **options):
        options.setdefault("speed", FAST)
        cm = serve_pty("esp300", **options)
        server = cm.__enter__()
        opened.append(cm)
        port = serial_pool.open(server.path, baudrate=19200)
        controller = ESP300ControllerAsync(
            port,
            name="sim_stage",
            axes=axes or {"x": {"number": 1, **LIMITED}, "y": {"number": 2, **LIMITED}},
            motor_on=motor_on,
            timeout=timeout,
        )
        if connect:
            on_loop(controller.connect())
        return server, controller

    yield make
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


# --- pinned to tests/transcripts/esp300.yaml ----------------------------------------------------


def test_connect_sends_the_transcripts_connect_section_in_order_in_one_lease():
    port = ReplayPort(transcript("driver_connect"), url="replay://esp300")

    async def body():
        esp = ESP300ControllerAsync(port, name="esp", axes={"x": {"number": 1}})
        await esp.connect()
        return esp

    esp = run(body())
    port.assert_done()  # every pair used, in order, nothing else sent
    assert len(port.transactions) == 1
    assert esp.x.stage_identity == ("TS50DC.5", "SN1263") and esp.x.motor_enabled is True


def test_a_port_without_an_esp300_is_refused_naming_both_answers():
    port = ReplayPort(
        [(b"VE?\r\n", None), (b"*IDN?\r\n", b"ACME,OVEN-3,42,1.0\r\n")], url="replay://other"
    )

    async def body():
        await ESP300ControllerAsync(port, name="esp", axes={"x": {"number": 1}}).connect()

    with pytest.raises(IdentityMismatch) as err:
        run(body())
    message = str(err.value)
    assert "VE? -> nothing" in message and "OVEN-3" in message and "replay://other" in message
    port.assert_done()


def test_a_move_is_pa_in_one_lease_then_md_and_tp_in_short_leases():
    port = ReplayPort(transcript("driver_connect"), url="replay://esp300")
    port.extend(
        [
            (b"1TP?\r\n", b"0.00000\r\n"),  # StandardMovable: the starting position
            (b"1VA?\r\n", b"5.00000\r\n"),  # the timeout: distance and velocity...
            (b"1AC?\r\n", b"20.00000\r\n"),  # ...and acceleration
            (b"1PA1.5\r\n", None),  # silent, like every ESP300 move
            (b"1MD?\r\n", b"0\r\n"),
            (b"1TP?\r\n", b"0.75000\r\n"),
            (b"1MD?\r\n", b"1\r\n"),
            (b"1TP?\r\n", b"1.50000\r\n"),
            (b"TE?\r\n", b"0\r\n"),  # errors are queued: drained once the motion is done
        ]
    )

    async def body():
        esp = ESP300ControllerAsync(port, name="esp", axes={"x": {"number": 1}})
        await esp.connect()
        await esp.x.set(1.5)

    run(body())
    port.assert_done()
    assert port.transactions[-3:] == [
        b"1PA1.5\r\n",
        b"1MD?\r\n1TP?\r\n",
        b"1MD?\r\n1TP?\r\nTE?\r\n",
    ]


def test_bad_axis_definitions_are_config_errors_before_any_port_traffic():
    port = ReplayPort([], url="replay://esp300")
    for axes, match in [
        ({"x": {"number": 4}}, "1, 2 or 3"),
        ({"x": {"number": 1}, "y": {"number": 1}}, "twice"),
        ({"x": {"number": 1, "units": "furlong"}}, "unknown units"),
        ({"x": {"number": 1, "low_limit": 5, "high_limit": -5}}, "not below"),
        ({"x": {"number": 1, "speed": 3}}, "unknown keys"),
        ({}, "1 to 3 axes"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ESP300ControllerAsync(port, name="esp", axes=axes)
    assert port.transactions == []


# --- against the simulator on a pty -------------------------------------------------------------


def test_a_move_ends_where_the_simulator_says_within_its_resolution(stage):
    server, esp = stage()
    sim = server.simulator
    on_loop(move(esp.x, 3.2108))
    reported = on_loop(esp.x.read())["sim_stage_x"]["value"]
    truth = sim.axis_position(1)
    assert not sim.is_moving(1)
    assert reported == pytest.approx(truth, abs=1e-5)  # the controller prints five decimals
    assert abs(truth - 3.2108) <= sim.axes[1].resolution
    assert on_loop(esp.x.locate()) == {"setpoint": 3.2108, "readback": reported}
    assert sim.protocol_errors == []


def test_two_axes_on_one_port_move_at_once(stage, RE, monkeypatch):  # noqa: N803
    server, esp = stage(speed=2.5)  # 5 mm at 5 mm/s: 1.25 s device time, 0.5 s real
    sim = server.simulator
    motions: list[tuple[int, float, float]] = []
    plan_move = sim._start_move

    def record(ax, target, **kw):  # the simulator's own motion plan, as it starts each move
        plan_move(ax, target, **kw)
        if ax.motion is not None:
            m = ax.motion
            motions.append((ax.number, m.start, m.start + sim.real_delay(m.duration)))

    monkeypatch.setattr(sim, "_start_move", record)
    RE(bps.mv(esp.x, 5.0, esp.y, -5.0))
    assert sorted(n for n, _, _ in motions) == [1, 2]
    (_, x0, x1), (_, y0, y1) = sorted(motions)
    assert x0 < y1 and y0 < x1, "the two motions never overlapped"
    span = max(x1, y1) - min(x0, y0)
    assert span < 0.75 * ((x1 - x0) + (y1 - y0)), "the moves ran (nearly) one after the other"
    assert sim.axis_position(1) == 5.0 and sim.axis_position(2) == -5.0
    assert sim.protocol_errors == []


def test_a_soft_limit_violation_is_refused_before_anything_is_sent(stage, RE, wait_until):  # noqa: N803
    server, esp = stage()
    sim = server.simulator
    before = list(sim.received_lines)
    with pytest.raises(ValueRejected, match=r"outside the limits \[-50, 50\]") as err:
        esp.x.set(75.0)  # synchronous: no status, no task, not even a position query
    assert err.value.instrument == "sim_stage_x" and err.value.limit == (-50, 50)
    assert sim.received_lines == before
    with pytest.raises(ValueRejected):
        RE(bps.mv(esp.x, -51))
    # A failed plan makes the RunEngine stop every movable it touched: that stop is all it sent.
    assert wait_until(lambda: len(sim.received_lines) > len(before))
    assert sim.received_lines[len(before) :] == ["1ST"]


def test_stop_during_a_move_stops_the_axis(stage, wait_until):
    server, esp = stage(speed=1.0)  # 40 mm at 5 mm/s: 8 s, stopped long before
    sim = server.simulator
    status = on_loop(start(esp.x, 40.0))
    assert wait_until(lambda: sim.is_moving(1))
    on_loop(esp.x.stop())
    with pytest.raises(RuntimeError, match="was stopped"):
        on_loop(finish(status))
    assert wait_until(lambda: 1 in sim.stops)  # the ST is on the wire; the far end reads it
    assert not sim.is_moving(1)
    here = sim.axis_position(1)
    assert 0.0 < here < 40.0
    assert on_loop(esp.x.read())["sim_stage_x"]["value"] == pytest.approx(here, abs=1e-5)


def test_a_motor_found_off_refuses_the_move_without_pa(stage):
    server, esp = stage(motors_on=False)
    assert esp.x.motor_enabled is False
    with pytest.raises(InstrumentFault, match="motor is off") as err:
        on_loop(move(esp.x, 5.0))
    assert err.value.code == 113
    assert not any("PA" in line for line in server.simulator.received_lines)


def test_the_descriptor_is_the_v1_axis_descriptor_for_the_same_port(stage):
    server, esp = stage()
    v1 = ESP300Controller(esp.port, name="sim_stage", timeout=0.5)
    x1 = v1.axis(1, name="sim_stage_x", **LIMITED)
    try:
        v1.connect()
        assert on_loop(esp.x.describe()) == dict(x1.describe())
        assert on_loop(esp.x.describe_configuration()) == dict(x1.describe_configuration())
        assert on_loop(esp.describe_configuration()) == dict(v1.describe_configuration())
        assert esp.x.hints == x1.hints
        config = on_loop(esp.x.read_configuration())
        assert {k: v["value"] for k, v in config.items()} == {
            k: v["value"] for k, v in x1.read_configuration().items()
        }
    finally:
        v1.close()
    for protocol in (Movable, Stoppable, Readable, Configurable, Locatable, Checkable):
        assert isinstance(esp.x, protocol)


def test_a_scan_in_a_real_run_engine(stage, RE, docs):  # noqa: N803
    server, esp = stage()
    RE(bp.scan([det], esp.x, 0, 1, 5))
    docs.validate()
    events = docs.events()
    assert [e["data"]["sim_stage_x"] for e in events] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [e["data"]["sim_stage_x_setpoint"] for e in events] == [0.0, 0.25, 0.5, 0.75, 1.0]
    descriptor = docs.of("descriptor")[0]
    assert descriptor["data_keys"]["sim_stage_x"]["units"] == "mm"
    assert descriptor["configuration"]["sim_stage_x"]["data"]["sim_stage_x_velocity"] == 5.0
    assert server.simulator.axis_position(1) == 1.0
    assert server.simulator.protocol_errors == []


def test_connect_applies_the_profile_and_clears_stale_errors(stage):
    server, esp = stage(
        axes={"x": {"number": 1, "units": "um", "velocity": 2.5, "acceleration": 10}},
        connect=False,
    )
    sim = server.simulator
    sim.queue_error(7)  # left over from an earlier session
    on_loop(esp.connect())
    assert esp.stale_errors == [7]
    assert sim.axes[1].units == 3 and sim.axes[1].velocity == 2.5
    assert sim.received_lines == [
        "VE?", "TE?", "TE?", "1MO?", "1ID?", "1SN3", "1VU?", "1VA2.5", "1AC10", "1VA?", "1AC?",
        "1TP?", "TE?",
    ]  # fmt: skip
    config = on_loop(esp.x.read_configuration())
    assert config["sim_stage_x_velocity"]["value"] == 2.5
    assert config["sim_stage_x_acceleration"]["value"] == 10.0


def test_a_profile_velocity_above_the_axis_maximum_fails_connect_before_va(stage):
    server, esp = stage(axes={"x": {"number": 1, "velocity": 30}}, max_velocity=20, connect=False)
    with pytest.raises(ValueRejected, match="from the profile") as err:
        on_loop(esp.connect())
    assert "20" in str(err.value) and err.value.instrument == "sim_stage_x"
    assert not any(line.startswith("1VA") for line in server.simulator.received_lines)


def test_velocity_is_set_read_back_and_refused_above_the_maximum(stage, RE):  # noqa: N803
    server, esp = stage()
    sim = server.simulator
    RE(bps.mv(esp.x.velocity, 7.5))
    assert sim.axes[1].velocity == 7.5
    assert sim.received_lines[-3:] == ["1VA7.5", "1VA?", "TE?"]  # one lease: set, read, errors
    with pytest.raises(ValueRejected, match="1VU"):
        on_loop(put(esp.x.velocity, 10_000))  # above 1VU read at connect: never sent
    assert "1VA10000" not in sim.received_lines
    with esp.port.lease("another program", 1.0) as lease:
        lease.write(b"1VU6\r\n")  # lowered behind the driver's back
    with pytest.raises(InstrumentFault, match="error 110") as err:
        on_loop(put(esp.x.velocity, 7))  # so the controller refuses it: a queued error
    assert err.value.code == 110


def test_a_motor_turned_off_behind_the_drivers_back_fails_the_move_with_113(stage):
    server, esp = stage()
    with esp.port.lease("another program", 1.0) as lease:
        lease.write(b"1MF\r\n")
    with pytest.raises(InstrumentFault, match="error 113: motor not enabled") as err:
        on_loop(move(esp.x, 5.0))
    assert err.value.code == 113 and "sim_stage_x" in str(err.value)
    assert server.simulator.axis_position(1) == 0.0


def test_a_plan_that_fails_mid_move_stops_the_axis(stage, RE, wait_until):  # noqa: N803
    server, esp = stage(speed=1.0)  # 40 mm at 5 mm/s: 8 s, stopped long before
    sim = server.simulator

    def plan():
        yield from bps.abs_set(esp.x, 40.0, group="move")
        yield from until_moving(sim, 1)
        raise RuntimeError("operator pulled the plug on this plan")

    with pytest.raises(RuntimeError, match="operator"):
        RE(plan())
    assert wait_until(lambda: 1 in sim.stops)
    assert not sim.is_moving(1)
    assert 0.0 < sim.axis_position(1) < 40.0


def test_after_a_replug_the_controller_is_proved_again_and_a_swapped_stage_refused(stage):
    server, esp = stage(timeout=0.3)
    sim = server.simulator
    on_loop(move(esp.x, 1.0))
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)):
        on_loop(move(esp.x, 2.0))
    sim.axes[1].stage_serial = "SN4711"  # someone swapped the stages meanwhile
    server.replug()
    with pytest.raises(IdentityMismatch, match="SN4711") as err:
        on_loop(move(esp.x, 3.0))
    assert "SN1263" in str(err.value) and server.path in str(err.value)
    assert "1PA3" not in sim.received_lines
    sim.axes[1].stage_serial = "SN1263"  # the right stage back on its connector
    on_loop(move(esp.x, 3.0))
    assert sim.axis_position(1) == 3.0 and esp.verified_generation == esp.port.generation


def test_after_a_reopen_the_next_lease_proves_controller_motor_and_stage_first():
    port = ReplayPort(transcript("driver_connect"), url="replay://esp300")
    reverify = [
        (b"VE?\r\n", b"ESP300 Version 3.04 07/27/01\r\n"),
        (b"TE?\r\n", b"0\r\n"),
        (b"1MO?\r\n", b"1\r\n"),
        (b"1ID?\r\n", b"TS50DC.5, SN1263\r\n"),
    ]
    port.extend([*reverify, (b"1TP?\r\n", b"0.50000\r\n")])

    async def body():
        esp = ESP300ControllerAsync(port, name="esp", axes={"x": {"number": 1}})
        await esp.connect()
        port.reopen()  # the adapter dropped out and came back
        return await esp.x.read()

    assert run(body())["esp_x"]["value"] == 0.5
    port.assert_done()
    assert port.transactions[-1] == b"".join(sent for sent, _ in reverify) + b"1TP?\r\n"


def test_a_queued_error_of_the_other_moving_axis_goes_to_that_axis():
    port = ReplayPort(transcript("driver_connect"), url="replay://esp300")
    # axis 2 is asked at connect what axis 1 is asked
    port.extend((sent.replace(b"1", b"2", 1), r) for sent, r in transcript("driver_connect")[2:])
    port.extend([(b"TE?\r\n", b"213\r\n"), (b"TE?\r\n", b"0\r\n"), (b"TE?\r\n", b"0\r\n")])

    async def body():
        esp = ESP300ControllerAsync(port, name="esp", axes={"x": {"number": 1}, "y": {"number": 2}})
        await esp.connect()
        esp.y.movable_logic._current = 1  # y is moving (its PA went out)
        async with esp.transaction() as x:
            for_x = await esp.errors_for(x, esp.x)  # x's move ended; 213 is y's
            for_y = await esp.errors_for(x, esp.y)  # y's move ends: its error was kept
        return for_x, for_y

    assert run(body()) == ([], [213])
    port.assert_done()


def test_pause_stops_the_move(stage, RE, wait_until):  # noqa: N803
    server, esp = stage(speed=1.0)
    sim = server.simulator

    def plan():
        yield from bps.abs_set(esp.x, 40.0, group="move")
        yield from until_moving(sim, 1)
        yield from bps.checkpoint()
        yield from bps.pause()  # as Ctrl-C or a pause request would, mid-move
        yield from bps.wait(group="move")

    with pytest.raises(RunEngineInterrupted):
        RE(plan())
    assert RE.state == "paused"
    assert wait_until(lambda: 1 in sim.stops)
    assert not sim.is_moving(1) and 0.0 < sim.axis_position(1) < 40.0
    RE.abort("test")
