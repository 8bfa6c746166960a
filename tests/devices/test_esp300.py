"""The ESP300 driver's tests: pinned to tests/transcripts/esp300.yaml (ReplayPort), checked
against the simulator on a real pty (its own state and motion records are the truth) and in a
real RunEngine; its descriptor keeps the data keys, units and sources catalogs already hold."""

from __future__ import annotations

import asyncio
import logging
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

from daqbridge.config import check_profile
from daqbridge.devices.core import ReplayPort, call_sync, wire_backend
from daqbridge.devices.esp300 import (
    ESP300Axis,
    Esp300Axis,
    ESP300Controller,
    esp300_error_meaning,
)
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.sim import serve_pty

FAST = 50.0  # simulator speed: a 10 mm move at 5 mm/s takes 2 s device time, 40 ms real
TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "esp300.yaml"
LIMITED = {"units": "mm", "low_limit": -50, "high_limit": 50}
ONE_AXIS = {"x": {"number": 1, **LIMITED}}
"""Axis 1 as the transcript's driver_connect section has it: mm, no velocity or acceleration."""


def transcript_pairs(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of the transcript shared with the simulator tests."""
    data = yaml.safe_load(TRANSCRIPTS.read_text())
    return [(s.encode(), None if r is None else r.encode()) for s, r in data[section]]


def transcript_replies(section: str) -> dict[str, bytes | None]:
    """The same section as a TranscriptPeer's replies: command line -> reply bytes."""
    return {s.decode().strip(): r for s, r in transcript_pairs(section)}


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
        controller = ESP300Controller(
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
    port = ReplayPort(transcript_pairs("driver_connect"), url="replay://esp300")

    async def body():
        esp = ESP300Controller(port, name="esp", axes=ONE_AXIS)
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
        await ESP300Controller(port, name="esp", axes=ONE_AXIS).connect()

    with pytest.raises(IdentityMismatch) as err:
        run(body())
    message = str(err.value)
    assert "VE? -> nothing" in message and "OVEN-3" in message and "replay://other" in message
    port.assert_done()


def test_a_move_is_pa_in_one_lease_then_md_and_tp_in_short_leases():
    port = ReplayPort(transcript_pairs("driver_connect"), url="replay://esp300")
    port.extend(
        [
            # The starting position is the one reported at connect (its 1TP?), the timeout and
            # the moment to look for the end come from the velocity and acceleration reported
            # there too: nothing is asked before the move command.
            (b"1PA1.5\r\n", None),  # silent, like every ESP300 move
            (b"1MD?\r\n", b"0\r\n"),
            (b"1TP?\r\n", b"0.75000\r\n"),
            (b"1MD?\r\n", b"1\r\n"),
            (b"1TP?\r\n", b"1.50000\r\n"),
            (b"TE?\r\n", b"0\r\n"),  # errors are queued: drained once the motion is done
        ]
    )

    async def body():
        esp = ESP300Controller(port, name="esp", axes=ONE_AXIS)
        await esp.connect()
        await esp.x.set(1.5)

    run(body())
    port.assert_done()
    assert port.transactions[-3:] == [
        b"1PA1.5\r\n",
        b"1MD?\r\n1TP?\r\n",
        b"1MD?\r\n1TP?\r\nTE?\r\n",
    ]


@pytest.mark.parametrize(
    ("axes", "options", "key", "words"),
    [
        ({"x": {"number": 4, **LIMITED}}, {}, "axes[0].number", "less than or equal to 3"),
        (
            {"x": {"number": 1, **LIMITED}, "y": {"number": 1, **LIMITED}},
            {},
            "axes[1].number",
            "axis number 1 appears twice",
        ),
        ({"x": {"number": 1, **LIMITED, "units": "furlong"}}, {}, "axes[0].units", "'furlong'"),
        (
            {"x": {"number": 1, "low_limit": 5, "high_limit": -5}},
            {},
            "axes[0].high_limit",
            "low_limit 5 is not below high_limit -5",
        ),
        ({"x": {"number": 1, **LIMITED, "speed": 3}}, {}, "axes[0].speed", "unknown key 'speed'"),
        ({}, {}, "axes", "at least 1 needed"),
        # the rules the profile held alone before the constructor validated through its model
        ({"x": {"number": 1, "low_limit": -5}}, {}, "axes[0].high_limit", "missing required"),
        ({"x": {"number": 1.0, **LIMITED}}, {}, "axes[0].number", "valid integer"),
        ({"x": {"number": 1, **LIMITED}}, {"motor_on": 1}, "motor_on", "valid boolean"),
        (
            {"x": {"number": 1, **LIMITED, "velocity": 1.765625}},
            {},
            "axes[0].velocity",
            "more than 5 decimals",
        ),
        ({"Focus": {"number": 1, **LIMITED}}, {}, "axes[0].name", "'Focus' is not an axis name"),
        ({"x": {"number": 1, "name": "y", **LIMITED}}, {}, "axes[0].name", "names itself 'y'"),
    ],
    ids=[
        "number",
        "number-twice",
        "units",
        "limits-disordered",
        "unknown-key",
        "no-axes",
        "limit-missing",
        "number-a-float",
        "motor_on-not-a-flag",
        "decimals",
        "name",
        "name-not-the-key",
    ],
)
def test_bad_axis_definitions_are_config_errors_before_any_port_traffic(axes, options, key, words):
    port = ReplayPort([], url="replay://esp300")
    with pytest.raises(ConfigError) as err:
        ESP300Controller(port, name="esp", axes=axes, **options)
    assert port.transactions == []
    error = err.value
    assert error.key == key and words in error.what, str(error)
    assert error.instrument == "esp" and error.resource == "replay://esp300" and error.fix
    if key.startswith("axes[0]") and isinstance(axes, dict):
        assert f"axis {next(iter(axes))}" in error.what.replace("'", ""), error.what


def test_the_constructor_refuses_in_the_words_of_config_check():
    """One copy of the rules: the constructor's error is the profile's issue for the same axis
    (what and fix), about the same key."""
    entry = {"number": 1, "name": "x", "low_limit": -5, "high_limit": 5, "velocity": 0.1234567}
    _, issues = check_profile(
        {
            "lab": {"name": "words"},
            "simulation": {"enabled": True},
            "instruments": [
                {
                    "id": "esp",
                    "driver": "esp300",
                    "port": "sim://esp300",
                    "esp300": {"axes": [entry]},
                }
            ],
        }
    )
    (issue,) = [i for i in issues if i.severity == "error"]
    with pytest.raises(ConfigError) as err:
        ESP300Controller(ReplayPort([], url="replay://esp300"), name="esp", axes=[entry])
    assert (
        issue.key
        == "instruments[0].esp300.axes[0].velocity"
        == f"instruments[0].esp300.{err.value.key}"
    )
    assert issue.what.rstrip(".") in err.value.what and issue.fix.rstrip(".") in err.value.fix


def test_the_profile_entries_build_the_same_controller_as_the_mapping_by_name():
    """``axes`` as the profile's entries (the models ``build`` passes on) or by name."""
    port = ReplayPort([], url="replay://esp300")
    by_name = ESP300Controller(port, name="esp", axes={"focus": {"number": 2, **LIMITED}})
    entries = ESP300Controller(
        port,
        name="esp",
        axes=[Esp300Axis.model_validate({"number": 2, "name": "focus", **LIMITED})],
    )
    for esp in (by_name, entries):
        assert [(n, a.name, a.limits) for n, a in esp.axes.items()] == [(2, "esp_focus", (-50, 50))]
    assert by_name.settings == entries.settings
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
    # -50.0: the settings model holds limits as floats (as a profile-built axis always had them)
    with pytest.raises(ValueRejected, match=r"outside the limits \[-50\.0, 50\.0\]") as err:
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


def test_the_descriptor_names_keys_units_precision_limits_and_sources(stage):
    server, esp = stage()
    where = f"ESP300 {server.path} axis 1"
    number = {"dtype": "number", "shape": []}
    assert on_loop(esp.x.describe()) == {
        "sim_stage_x": {**number, "source": f"{where} 1TP?", "units": "mm", "precision": 5},
        "sim_stage_x_setpoint": {
            **number,
            "source": f"{where} 1PA",  # the target the move command sent, not a measurement
            "units": "mm",
            "precision": 5,
            "limits": {"control": {"low": -50, "high": 50}},
        },
    }
    text = {"dtype": "string", "shape": []}
    assert on_loop(esp.x.describe_configuration()) == {
        "sim_stage_x_velocity": {**number, "source": f"{where} 1VA", "units": "mm/s"},
        "sim_stage_x_acceleration": {**number, "source": f"{where} 1AC", "units": "mm/s^2"},
        "sim_stage_x_max_velocity": {**number, "source": f"{where} 1VU?", "units": "mm/s"},
        "sim_stage_x_stage_model": {**text, "source": f"{where} 1ID?"},
        "sim_stage_x_stage_serial": {**text, "source": f"{where} 1ID?"},
    }
    assert on_loop(esp.describe_configuration()) == {
        "sim_stage_identity": {**text, "source": f"ESP300 {server.path} VE?"}
    }
    assert esp.x.hints == {"fields": ["sim_stage_x"]}
    assert esp.x.limits == (-50, 50)
    config = {k: v["value"] for k, v in on_loop(esp.x.read_configuration()).items()}
    sim = server.simulator.axes[1]
    assert config == {
        "sim_stage_x_velocity": sim.velocity,
        "sim_stage_x_acceleration": sim.acceleration,
        "sim_stage_x_max_velocity": sim.max_velocity,
        "sim_stage_x_stage_model": sim.stage_model,
        "sim_stage_x_stage_serial": sim.stage_serial,
    }
    for protocol in (Movable, Stoppable, Readable, Configurable, Locatable, Checkable):
        assert isinstance(esp.x, protocol)
    assert isinstance(esp.x, ESP300Axis) and esp.axes == {1: esp.x, 2: esp.y}
    assert esp.x.controller is esp


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
        axes={"x": {"number": 1, **LIMITED, "units": "um", "velocity": 2.5, "acceleration": 10}},
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
    server, esp = stage(
        axes={"x": {"number": 1, **LIMITED, "velocity": 30}}, max_velocity=20, connect=False
    )
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


def test_velocity_and_acceleration_are_configuration_checked_before_the_wire(stage):
    server, esp = stage(max_velocity=20)
    sim = server.simulator
    assert on_loop(esp.x.max_velocity.get_value()) == 20.0
    before = list(sim.received_lines)
    for bad in (-1, 0, "fast", None):
        with pytest.raises(ValueRejected):
            on_loop(put(esp.x.velocity, bad))
    with pytest.raises(ValueRejected, match="1VU") as err:
        on_loop(put(esp.x.velocity, 25))
    assert err.value.limit == (0.0, 20.0) and err.value.instrument == "sim_stage_x"
    assert sim.received_lines == before  # every refusal came before any byte
    on_loop(put(esp.x.velocity, 20))  # the maximum itself is allowed
    on_loop(put(esp.x.acceleration, 40))
    assert (sim.axes[1].velocity, sim.axes[1].acceleration) == (20.0, 40.0)
    config = on_loop(esp.x.read_configuration())
    assert config["sim_stage_x_velocity"]["value"] == 20.0
    assert config["sim_stage_x_acceleration"]["value"] == 40.0


def test_a_motor_turned_off_behind_the_drivers_back_fails_the_move_with_113(stage):
    server, esp = stage()
    with esp.port.lease("another program", 1.0) as lease:
        lease.write(b"1MF\r\n")
    with pytest.raises(InstrumentFault, match="error 113: motor not enabled") as err:
        on_loop(move(esp.x, 5.0))
    assert err.value.code == 113 and "sim_stage_x" in str(err.value)
    assert "1MO" in err.value.fix
    assert server.simulator.axis_position(1) == 0.0
    assert esp300_error_meaning(213) == "motor not enabled"  # any axis: code % 100
    with esp.port.lease("another program", 1.0) as lease:
        lease.write(b"1MO\r\n")  # turned on again: the next move goes
    on_loop(move(esp.x, 1.0))
    assert server.simulator.axis_position(1) == 1.0


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
    port = ReplayPort(transcript_pairs("driver_connect"), url="replay://esp300")
    reverify = [
        (b"VE?\r\n", b"ESP300 Version 3.04 07/27/01\r\n"),
        (b"TE?\r\n", b"0\r\n"),
        (b"1MO?\r\n", b"1\r\n"),
        (b"1ID?\r\n", b"TS50DC.5, SN1263\r\n"),
    ]
    port.extend([*reverify, (b"1TP?\r\n", b"0.50000\r\n")])

    async def body():
        esp = ESP300Controller(port, name="esp", axes=ONE_AXIS)
        await esp.connect()
        port.reopen()  # the adapter dropped out and came back
        return await esp.x.read()

    assert run(body())["esp_x"]["value"] == 0.5
    port.assert_done()
    assert port.transactions[-1] == b"".join(sent for sent, _ in reverify) + b"1TP?\r\n"


def test_a_queued_error_of_the_other_moving_axis_goes_to_that_axis():
    connect = transcript_pairs("driver_connect")
    assert connect[-1] == (b"TE?\r\n", b"0\r\n")  # once, after every axis was set up
    # axis 2 is asked at connect what axis 1 is asked, before that last TE?
    port = ReplayPort(connect[:-1], url="replay://esp300")
    port.extend((sent.replace(b"1", b"2", 1), r) for sent, r in connect[2:-1])
    port.extend([connect[-1]])
    port.extend([(b"TE?\r\n", b"213\r\n"), (b"TE?\r\n", b"0\r\n"), (b"TE?\r\n", b"0\r\n")])

    async def body():
        esp = ESP300Controller(
            port, name="esp", axes={"x": {"number": 1, **LIMITED}, "y": {"number": 2, **LIMITED}}
        )
        await esp.connect()
        esp.y.movable_logic._current = 1  # y is moving (its PA went out)
        async with esp.transaction() as x:
            for_x = await esp.errors_for(x, esp.x)  # x's move ended; 213 is y's
            for_y = await esp.errors_for(x, esp.y)  # y's move ends: its error was kept
        return for_x, for_y

    assert run(body()) == ([], [213])
    port.assert_done()


def test_pause_stops_the_move_and_abort_leaves_it_stopped(stage, RE, wait_until):  # noqa: N803
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
    assert not sim.is_moving(1)
    here = sim.axis_position(1)
    assert 0.0 < here < 40.0
    RE.abort("test")
    assert RE.state == "idle"
    assert pa_lines(sim) == ["1PA40"]  # the abort resumed nothing
    assert not sim.is_moving(1) and sim.axis_position(1) == here


# --- ported from the v1 driver's tests: the same instrument behaviours on the async devices -----


def sync(work, timeout: float = 20.0) -> Any:
    """Run on the RunEngine's loop and raise the instrument's own error (call_sync unwraps the
    TimeoutError that ophyd-async puts around an InstrumentTimeout)."""
    return call_sync(work, timeout=timeout)


def pa_lines(sim, axis: int | None = None) -> list[str]:
    prefix = f"{axis}PA" if axis else "PA"
    return [line for line in sim.received_lines if prefix in line]


def with_stage_reply(reply: bytes | None) -> list[tuple[bytes, bytes | None]]:
    """driver_connect with another answer to ``1ID?`` (silence: TE? is asked why)."""
    pairs = []
    for sent, answer in transcript_pairs("driver_connect"):
        if sent == b"1ID?\r\n":
            pairs.append((sent, reply))
            if reply is None:
                pairs.append((b"TE?\r\n", b"0\r\n"))
        else:
            pairs.append((sent, answer))
    return pairs


def test_connect_keeps_what_the_shared_transcript_answered():
    port = ReplayPort(transcript_pairs("driver_connect"), url="replay://esp300")

    async def body():
        esp = ESP300Controller(port, name="esp", axes=ONE_AXIS)
        await esp.connect()
        return esp

    esp = run(body())
    port.assert_done()
    last = {
        signal.name: wire_backend(signal).last_reading["value"]
        for signal in (
            esp.x.readback,
            esp.x.velocity,
            esp.x.acceleration,
            esp.x.max_velocity,
            esp.x.stage_model,
            esp.x.stage_serial,
            esp.identity,
        )
    }
    assert last == {
        "esp_x": 0.0,
        "esp_x_velocity": 5.0,
        "esp_x_acceleration": 20.0,
        "esp_x_max_velocity": 200.0,
        "esp_x_stage_model": "TS50DC.5",
        "esp_x_stage_serial": "SN1263",
        "esp_identity": "ESP300 Version 3.04 07/27/01",
    }
    assert esp.x.limits == (-50, 50)  # every axis has both soft limits


@pytest.mark.parametrize(
    ("reply", "stage_identity"),
    [(b"Unknown\r\n", ("Unknown", "")), (b"\r\n", ("", "")), (None, ("", ""))],
    ids=["no-esp-data", "empty", "silent"],
)
def test_a_stage_that_cannot_say_what_it_is_is_still_accepted(caplog, reply, stage_identity):
    port = ReplayPort(with_stage_reply(reply), url="replay://esp300")

    async def body():
        esp = ESP300Controller(port, name="esp", axes=ONE_AXIS)
        await esp.connect()
        return esp

    with caplog.at_level(logging.WARNING, logger="daqbridge.devices.esp300"):
        esp = run(body())
    port.assert_done()
    assert esp.x.stage_identity == stage_identity
    assert wire_backend(esp.x.stage_model).last_reading["value"] == stage_identity[0]
    assert ("did not answer 1ID?" in caplog.text) == (reply is None)


def test_replies_with_sign_padding_and_exponent_are_numbers(serial_pool, transcript, RE):  # noqa: N803
    peer = transcript(
        {
            "VE?": b"ESP300 Version 3.04 07/27/01\r\n",
            "TE?": b"0\r\n",
            "1MO?": b"1\r\n",
            "1ID?": b"TS50DC.5, SN1263\r\n",
            "1VU?": b"2.0E+2\r\n",
            "1VA?": b"+5\r\n",
            "1AC?": b"20.000000\r\n",
            "1TP?": b"+12.345\r\n",
            "1MD?": b"1\r\n",
        },
        terminator=b"\r\n",
    )
    port = serial_pool.open(peer.path, baudrate=19200)
    esp = ESP300Controller(port, name="esp", axes=ONE_AXIS, timeout=0.5)
    on_loop(esp.connect())
    config = {k: v["value"] for k, v in on_loop(esp.x.read_configuration()).items()}
    assert (config["esp_x_velocity"], config["esp_x_max_velocity"]) == (5.0, 200.0)
    assert on_loop(esp.x.read())["esp_x"]["value"] == 12.345
    peer.replies["1TP?"] = b"12.34500\r\n"
    on_loop(move(esp.x, 3))
    assert "1PA3" in peer.received
    assert on_loop(esp.x.read())["esp_x"]["value"] == 12.345  # the controller's, not the target
    peer.replies["1TP?"] = b"12,345\r\n"
    with pytest.raises(ReplyError, match=r"'1TP\?' is not a position") as err:
        on_loop(esp.x.read())
    assert peer.path in str(err.value)


def test_another_instrument_on_a_real_port_is_refused(serial_pool, RE):  # noqa: N803
    with serve_pty("newport1830c", speed=FAST) as server:
        port = serial_pool.open(server.path, baudrate=19200)
        esp = ESP300Controller(port, name="esp", axes=ONE_AXIS, timeout=0.2)
        with pytest.raises(IdentityMismatch) as err:
            sync(esp.connect())
    message = str(err.value)
    assert "VE? -> nothing" in message and "ESP300" in message and server.path in message


def test_grid_scan_scan_mv_and_count_with_a_power_meter(stage, serial_pool, RE, docs):  # noqa: N803
    server, esp = stage()
    sim = server.simulator
    # Light on the meter grows with x and y, so each event proves the stage was there first.
    with serve_pty(
        "newport1830c",
        speed=FAST,
        noise=0,
        response_time=0,
        optical_input=lambda: 1e-6 * (1 + 0.1 * sim.axis_position(1) + 0.01 * sim.axis_position(2)),
    ) as pm_server:
        meter = Newport1830C(serial_pool.open(pm_server.path, baudrate=9600), name="pm", range=0)
        on_loop(meter.connect())
        RE(bp.grid_scan([meter], esp.x, -2, 2, 3, esp.y, -10, 10, 3))
        RE(bp.scan([meter], esp.x, 0, 4, 5))
        RE(bps.mv(esp.x, 1.5, esp.y, -3.0))
        RE(bp.count([meter, esp.x], 2))
    docs.validate()
    events = docs.events()
    assert len(events) == 9 + 5 + 2
    for event in events[:14]:
        data = event["data"]
        y_at = data.get("sim_stage_y", 10.0)  # the 1D scan runs where the grid scan left y
        want = 1e-6 * (1 + 0.1 * data["sim_stage_x"] + 0.01 * y_at)
        assert data["pm_power"] == pytest.approx(want, rel=2e-3)
    grid = events[:9]
    assert sorted({e["data"]["sim_stage_x"] for e in grid}) == [-2.0, 0.0, 2.0]
    assert sorted({e["data"]["sim_stage_y"] for e in grid}) == [-10.0, 0.0, 10.0]
    assert [e["data"]["sim_stage_x"] for e in events[14:]] == [1.5, 1.5]
    assert sim.axis_position(1) == 1.5 and sim.axis_position(2) == -3.0
    descriptor = docs.of("descriptor")[0]
    assert descriptor["data_keys"]["pm_power"]["units"] == "W"
    assert descriptor["data_keys"]["sim_stage_x"]["units"] == "mm"
    assert sim.protocol_errors == []


def test_readback_subscribers_and_watchers_see_the_stage_travel(stage):
    server, esp = stage(speed=5.0)  # 5 mm at 5 mm/s: 1 s device time, 0.2 s real

    async def watched_move():
        seen: list[float] = []
        progress: list[float] = []

        def reading(update) -> None:
            seen.append(update["sim_stage_x"]["value"])

        esp.x.readback.subscribe_reading(reading)
        try:
            status = esp.x.set(5.0)
            status.watch(lambda *args, **kw: progress.append(kw["current"]))
            await status
        finally:
            esp.x.readback.clear_sub(reading)
        return seen, progress

    seen, progress = on_loop(watched_move())
    assert any(0.0 < v < 5.0 for v in seen), seen
    assert any(0.0 < v < 5.0 for v in progress), progress
    assert seen[-1] == progress[-1] == server.simulator.axis_position(1) == 5.0


def test_stop_success_finishes_the_status_without_error(stage, wait_until):
    server, esp = stage(speed=1.0)
    sim = server.simulator
    status = on_loop(start(esp.x, -30.0))
    assert wait_until(lambda: sim.is_moving(1))
    on_loop(esp.stop(success=True))  # the controller's stop: every axis
    on_loop(finish(status))
    assert status.success
    assert wait_until(lambda: 1 in sim.stops and 2 in sim.stops)
    assert not sim.is_moving(1) and -30.0 < sim.axis_position(1) < 0.0


def test_a_scan_beyond_a_soft_limit_is_refused_at_that_point_and_bad_values_never_sent(
    stage,
    RE,  # noqa: N803
):
    server, esp = stage()
    sim = server.simulator
    with pytest.raises(ValueRejected):
        RE(bp.scan([], esp.x, 0, 60, 3))  # the point at 60 is refused, not clipped
    for bad in ("10\r\n1PA-50", "ten", float("nan"), None):
        with pytest.raises(ValueRejected):
            esp.x.set(bad)
    assert pa_lines(sim) == ["1PA0", "1PA30"]  # the scan's first two points only
    assert sim.axis_position(1) == 30.0


def test_a_motor_off_at_connect_is_reported_by_axis_name(stage, caplog):
    server, esp = stage(motors_on=False, connect=False)
    with caplog.at_level(logging.WARNING, logger="daqbridge.devices.esp300"):
        on_loop(esp.connect())
    assert "motor of axis 1 (sim_stage_x) is OFF" in caplog.text
    with pytest.raises(InstrumentFault, match="motor is off") as err:
        sync(move(esp.x, 5.0))
    assert "1MO" in str(err.value) and "motor_on=True" in str(err.value)
    assert pa_lines(server.simulator) == []


def test_motor_on_in_the_profile_turns_the_motor_on_at_connect(stage):
    server, esp = stage(motors_on=False, motor_on=True)
    sim = server.simulator
    assert sim.motor_on(1) and esp.x.motor_enabled is True
    assert "1MO" in sim.received_lines
    on_loop(move(esp.x, 2.0))
    assert sim.axis_position(1) == 2.0


def test_settings_changed_on_the_front_panel_are_read_not_remembered(stage):
    server, esp = stage()
    sim = server.simulator
    with sim.lock:  # the front panel, not the driver
        sim.axes[1].velocity, sim.axes[1].acceleration, sim.axes[1].max_velocity = 3.5, 12.0, 80.0
    before = len(sim.received_lines)
    config = {k: v["value"] for k, v in on_loop(esp.x.read_configuration()).items()}
    values = (config["sim_stage_x_velocity"], config["sim_stage_x_acceleration"])
    assert values + (config["sim_stage_x_max_velocity"],) == (3.5, 12.0, 80.0)
    asked = sim.received_lines[before:]
    assert {"1VA?", "1AC?", "1VU?", "1ID?"} <= set(asked)
    assert all(line.endswith("?") for line in asked), asked  # asks, sets nothing


def test_a_configuration_read_asks_what_the_shared_transcript_answers(
    serial_pool,
    transcript,
    RE,  # noqa: N803
):
    peer = transcript(transcript_replies("driver_connect"), terminator=b"\r\n")
    port = serial_pool.open(peer.path, baudrate=19200)
    esp = ESP300Controller(port, name="esp", axes=ONE_AXIS, timeout=0.5)
    on_loop(esp.connect())
    at_connect = len(peer.received)
    refresh = transcript_replies("driver_refresh")
    peer.replies.update(refresh)
    config = {k: v["value"] for k, v in on_loop(esp.x.read_configuration()).items()}
    assert set(peer.received[at_connect:]) == set(refresh)
    assert config == {
        "esp_x_velocity": 5.0,
        "esp_x_acceleration": 20.0,
        "esp_x_max_velocity": 200.0,
        "esp_x_stage_model": "TS50DC.5",
        "esp_x_stage_serial": "SN1263",
    }


@pytest.mark.parametrize(
    ("query", "reply", "error"),
    [("1ID?", None, InstrumentTimeout), ("1AC?", b"20.0x\r\n", ReplyError)],
    ids=["silent", "garbled"],
)
def test_a_bad_reply_to_a_configuration_read_names_controller_port_and_query(
    serial_pool,
    transcript,
    RE,  # noqa: N803
    query,
    reply,
    error,
):
    peer = transcript(transcript_replies("driver_connect"), terminator=b"\r\n")
    port = serial_pool.open(peer.path, baudrate=19200)
    esp = ESP300Controller(port, name="esp", axes=ONE_AXIS, timeout=0.3)
    on_loop(esp.connect())
    peer.replies[query] = reply
    with pytest.raises(error) as err:
        sync(esp.x.read_configuration())
    message = str(err.value)
    assert "'esp'" in message and peer.path in message and query in message
    assert esp.x.stage_identity == ("TS50DC.5", "SN1263")  # a silent stage is not a new stage


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [("drop_next", InstrumentTimeout, r"no reply to '1MD\?'"), ("garble_next", ReplyError, "1MD")],
)
def test_a_lost_or_garbled_reply_during_a_move_fails_stops_and_the_next_move_works(
    stage, monkeypatch, wait_until, fault, error, text
):
    server, esp = stage(timeout=0.2)
    sim = server.simulator
    answer_pa = sim._cmd_PA

    def line_noise_on_the_reply_after_the_first_pa(ax, arg):
        answer_pa(ax, arg)
        if not pa_lines(sim)[1:]:
            setattr(sim.faults, fault, 1)  # the simulator's own fault: the first 1MD? reply

    monkeypatch.setattr(sim, "_cmd_PA", line_noise_on_the_reply_after_the_first_pa)
    with pytest.raises(error, match=text) as err:
        sync(move(esp.x, 3.0))
    assert server.path in str(err.value) and "sim_stage" in str(err.value)
    assert wait_until(lambda: 1 in sim.stops)  # lost track of a moving stage: it was stopped
    assert getattr(sim.faults, fault) == 0
    on_loop(move(esp.x, 4.0))
    assert sim.axis_position(1) == 4.0
    assert on_loop(esp.x.read())["sim_stage_x"]["value"] == 4.0


def test_unplug_fails_naming_the_port_and_replug_proves_the_controller_again(stage):
    server, esp = stage(timeout=0.2)
    sim = server.simulator
    on_loop(move(esp.x, 1.0))
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)) as err:
        sync(move(esp.x, 2.0))
    assert server.path in str(err.value)
    server.replug()
    before = len(sim.received_lines)
    on_loop(move(esp.x, 3.0))
    assert sim.axis_position(1) == 3.0
    assert on_loop(esp.x.read())["sim_stage_x"]["value"] == 3.0
    asked = sim.received_lines[before:]
    proof = ["VE?", "TE?", "1MO?", "1ID?", "2MO?", "2ID?"]
    assert asked[: len(proof)] == proof and asked.index("1PA3") >= len(proof)
    assert esp.verified_generation == esp.port.generation


def test_a_garbled_stage_identity_after_a_replug_is_read_again(stage, monkeypatch):
    server, esp = stage(timeout=0.3)
    sim = server.simulator
    on_loop(move(esp.x, 1.0))
    answer_id = sim._cmd_ID
    garbled: list[int] = []

    def line_noise_on_the_first_id_after_the_replug(ax, arg):
        if sim.unplug_count and not garbled:
            garbled.append(ax.number)
            sim.faults.garble_next = 1  # the simulator's own fault, at the reply that matters
        answer_id(ax, arg)

    monkeypatch.setattr(sim, "_cmd_ID", line_noise_on_the_first_id_after_the_replug)
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)):
        sync(move(esp.x, 2.0))
    server.replug()
    on_loop(move(esp.x, 3.0))  # not an IdentityMismatch: the second 1ID? gives the known stage
    assert garbled == [1] and sim.faults.garble_next == 0
    assert esp.x.stage_identity == ("TS50DC.5", "SN1263")
    assert sim.received_lines.count("1ID?") == 3  # at connect, the garbled one, the check
    assert sim.axis_position(1) == 3.0


def test_a_closed_controller_refuses_moves_before_any_byte(stage):
    server, esp = stage()
    before = list(server.simulator.received_lines)
    esp.close()
    with pytest.raises(InstrumentError, match="closed"):
        sync(move(esp.x, 1.0))
    assert server.simulator.received_lines == before
