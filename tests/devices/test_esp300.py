"""ESP300 controller and axes against the simulator on real ptys, in a real RunEngine."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.protocols import Configurable, Movable, Readable, Stoppable
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import RunEngineInterrupted

from daqbridge.devices.esp300 import ESP300Axis, ESP300Controller, esp300_error_meaning
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


def transcript_replies(section: str) -> dict[str, bytes | None]:
    """A section of tests/transcripts/esp300.yaml (shared with the simulator tests) as the
    replies of a TranscriptPeer: command line without terminator -> reply bytes."""
    data = yaml.safe_load(TRANSCRIPTS.read_text())
    return {
        sent.strip(): None if reply is None else reply.encode() for sent, reply in data[section]
    }


@pytest.fixture
def stage(serial_pool):
    """``stage(**sim_options)`` -> (server, controller, x, y): axes 1 and 2 in mm, limits +-50."""
    opened = []

    def make(*, motor_on=False, timeout=0.5, **options):
        options.setdefault("speed", FAST)
        cm = serve_pty("esp300", **options)
        server = cm.__enter__()
        opened.append((cm, None))
        port = serial_pool.open(server.path, baudrate=19200)
        controller = ESP300Controller(port, name="esp", timeout=timeout, motor_on=motor_on)
        opened[-1] = (cm, controller)
        x = controller.axis(1, name="x", units="mm", low_limit=-50, high_limit=50)
        y = controller.axis(2, name="y", units="mm", low_limit=-50, high_limit=50)
        return server, controller, x, y

    yield make
    for cm, controller in reversed(opened):
        if controller is not None:
            controller.close()
        cm.__exit__(None, None, None)


def pa_lines(sim, axis=None):
    prefix = f"{axis}PA" if axis else "PA"
    return [line for line in sim.received_lines if prefix in line]


def test_connect_checks_identity_and_applies_settings(serial_pool):
    with serve_pty("esp300", speed=FAST) as server:
        port = serial_pool.open(server.path, baudrate=19200)
        controller = ESP300Controller(port, name="esp", timeout=0.5)
        try:
            x = controller.axis(
                1,
                name="x",
                units="um",
                low_limit=-5,
                high_limit=5,
                velocity=2.5,
                acceleration=10,
            )
            server.simulator.queue_error(7)  # left over from an earlier session
            assert "ESP300" in controller.connect()
            assert controller.stale_errors == [7]
            sim = server.simulator
            assert sim.axes[1].units == 3 and sim.axes[1].velocity == 2.5
            assert x.velocity.get() == 2.5 and x.acceleration.get() == 10
            assert x.position == 0.0 and x.egu == "um" and x.limits == (-5, 5)
            desc = x.describe()
            assert desc["x"]["units"] == "um" and desc["x"]["dtype"] == "number"
            assert server.path in desc["x"]["source"]
            assert x.hints == {"fields": ["x"]}
            assert set(x.read_configuration()) == {
                "x_velocity",
                "x_acceleration",
                "x_max_velocity",
                "x_stage_model",
                "x_stage_serial",
            }
            for proto in (Movable, Stoppable, Readable, Configurable):
                assert isinstance(x, proto)
            # An axis made after connect is configured at once.
            z = controller.axis(3, name="z", units="deg", low_limit=0, high_limit=360)
            assert sim.axes[3].units == 7 and z.motor_enabled is True
        finally:
            controller.close()


def test_reply_formats_with_sign_and_padding(serial_pool, transcript):
    peer = transcript(
        {
            "VE?": b"ESP300 Version 3.04 07/27/01\r\n",
            "TE?": b"0\r\n",
            "1MO?": b"1\r\n",
            "1VA?": b"+5\r\n",
            "1AC?": b"20.000000\r\n",
            "1TP?": b"+12.345\r\n",
            "1ID?": b"TS50DC.5, SN1263\r\n",
            "1VU?": b"2.0E+2\r\n",
        },
        terminator=b"\r\n",
    )
    port = serial_pool.open(peer.path, baudrate=19200)
    controller = ESP300Controller(port, name="esp", timeout=0.5)
    try:
        x = controller.axis(1, name="x")
        controller.connect()
        assert x.position == 12.345 and x.velocity.get() == 5.0 and x.max_velocity.get() == 200
        assert x.limits == (0, 0)  # no soft limits given
        peer.replies["1TP?"] = b"12.34500\r\n"
        peer.replies["1MD?"] = b"1\r\n"
        x.set(3).wait(5)
        assert x.position == 12.345  # what the controller says, not the target
        assert "1PA3" in peer.received
        peer.replies["1TP?"] = b"12,345\r\n"
        with pytest.raises(ReplyError, match="not a number"):
            x.set(4).wait(5)
    finally:
        controller.close()


def test_other_instrument_on_the_port_is_refused(serial_pool):
    with serve_pty("newport1830c", speed=FAST) as server:
        port = serial_pool.open(server.path, baudrate=19200)
        controller = ESP300Controller(port, name="esp", timeout=0.2)
        try:
            with pytest.raises(IdentityMismatch) as err:
                controller.connect()
            msg = str(err.value)
            assert "VE? -> nothing" in msg and "ESP300" in msg and server.path in msg
        finally:
            controller.close()


def test_bad_axis_definitions_are_config_errors(stage):
    _, controller, _, _ = stage()
    with pytest.raises(ConfigError, match="already exists"):
        controller.axis(1, name="again")
    with pytest.raises(ConfigError, match="1, 2 or 3"):
        controller.axis(4)
    with pytest.raises(ConfigError, match="unknown units"):
        controller.axis(3, units="furlong")
    with pytest.raises(ConfigError, match="not below"):
        controller.axis(3, low_limit=5, high_limit=-5)


def test_scan_grid_scan_and_mv_with_power_meter(stage, serial_pool, RE, docs):
    server, controller, x, y = stage()
    controller.connect()
    esp = server.simulator
    # Light on the meter grows with x and y, so each event proves the stage was there first.
    with serve_pty(
        "newport1830c",
        speed=FAST,
        noise=0,
        response_time=0,
        optical_input=lambda: 1e-6 * (1 + 0.1 * esp.axis_position(1) + 0.01 * esp.axis_position(2)),
    ) as pm_server:
        meter = Newport1830C(serial_pool.open(pm_server.path, baudrate=9600), name="pm", range=0)
        try:
            call_in_bluesky_event_loop(meter.connect(), timeout=10)  # ophyd-async meter
            RE(bp.grid_scan([meter], x, -2, 2, 3, y, -10, 10, 3))
            RE(bp.scan([meter], x, 0, 4, 5))
            RE(bps.mv(x, 1.5, y, -3.0))
            RE(bp.count([meter, x], 2))
        finally:
            meter.close()
    docs.validate()
    events = docs.events()
    assert len(events) == 9 + 5 + 2
    for ev in events[:14]:
        y_at = ev["data"].get("y", 10.0)  # the 1D scan runs where the grid scan left y
        want = 1e-6 * (1 + 0.1 * ev["data"]["x"] + 0.01 * y_at)
        assert ev["data"]["pm_power"] == pytest.approx(want, rel=2e-3)
    grid = events[:9]
    assert sorted({e["data"]["x"] for e in grid}) == [-2.0, 0.0, 2.0]
    assert sorted({e["data"]["y"] for e in grid}) == [-10.0, 0.0, 10.0]
    assert x.position == 1.5 and y.position == -3.0
    assert esp.axis_position(1) == 1.5 and esp.axis_position(2) == -3.0
    desc = docs.of("descriptor")[0]
    assert desc["data_keys"]["pm_power"]["units"] == "W"
    assert desc["data_keys"]["x"]["units"] == "mm"
    assert desc["configuration"]["x"]["data"]["x_velocity"] == 5.0
    assert esp.protocol_errors == []


def test_readback_moves_while_moving(stage):
    server, controller, x, _ = stage(speed=5.0)  # 5 mm at 5 mm/s: about 0.25 s real
    controller.connect()
    seen = []
    x.readback.subscribe(lambda value, **kw: seen.append(value), run=False)
    progress = []
    status = x.set(5.0)
    status.watch(lambda **kw: progress.append(kw["current"]))
    assert x.moving
    status.wait(10)
    assert not x.moving and x.position == 5.0
    assert any(0.0 < v < 5.0 for v in seen), seen
    assert any(0.0 < v < 5.0 for v in progress), progress


def test_two_axes_move_concurrently_on_one_port(stage, RE, wait_until):
    server, controller, x, y = stage(speed=5.0)
    controller.connect()
    sim = server.simulator
    both = threading.Event()
    done = threading.Event()

    def sample():
        while not done.is_set():
            if sim.is_moving(1) and sim.is_moving(2):
                both.set()
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        RE(bps.mv(x, 5.0, y, -5.0))
    finally:
        done.set()
        sampler.join(2)
    assert both.is_set(), "axes 1 and 2 never moved at the same time"
    assert sim.axis_position(1) == 5.0 and sim.axis_position(2) == -5.0
    assert sim.protocol_errors == []


def test_exception_in_plan_stops_the_move(stage, RE, wait_until):
    server, controller, x, _ = stage(speed=1.0)  # 40 mm at 5 mm/s: 8 s, stopped long before
    controller.connect()
    sim = server.simulator

    def plan():
        yield from bps.abs_set(x, 40.0, group="move")
        yield from bps.sleep(0.2)
        raise RuntimeError("operator pulled the plug on this plan")

    with pytest.raises(RuntimeError, match="operator"):
        RE(plan())
    assert wait_until(lambda: 1 in sim.stops)
    assert wait_until(lambda: not sim.is_moving(1))
    assert wait_until(lambda: not x.moving)
    assert 0.0 < sim.axis_position(1) < 40.0


def test_pause_and_abort_stop_the_move(stage, RE, wait_until):
    server, controller, x, _ = stage(speed=1.0)
    controller.connect()
    sim = server.simulator
    timer = threading.Timer(0.2, RE.request_pause)
    timer.start()
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(bps.mv(x, 40.0))  # interrupted by the pause (like Ctrl-C)
    finally:
        timer.cancel()
    assert RE.state == "paused"
    assert wait_until(lambda: 1 in sim.stops)
    with contextlib.suppress(Exception):
        RE.abort("test")
    assert wait_until(lambda: not sim.is_moving(1))
    assert sim.axis_position(1) < 40.0


def test_stop_fails_the_status_and_stop_success_finishes_it(stage, wait_until):
    server, controller, x, _ = stage(speed=1.0)
    controller.connect()
    status = x.set(30.0)
    assert wait_until(lambda: server.simulator.is_moving(1))
    x.stop()
    with pytest.raises(InstrumentError, match="stopped at"):
        status.wait(5)
    status = x.set(-30.0)
    assert wait_until(lambda: server.simulator.is_moving(1))
    controller.stop(success=True)
    status.wait(5)
    assert status.success and server.simulator.stops.count(1) >= 2


def test_soft_limit_raises_before_any_pa(stage, RE):
    server, controller, x, _ = stage()
    controller.connect()
    sim = server.simulator
    with pytest.raises(ValueRejected, match=r"outside the limits \[-50, 50\]") as err:
        x.set(75.0)
    assert err.value.instrument == "x" and err.value.limit == (-50, 50)
    with pytest.raises(ValueRejected):
        RE(bps.mv(x, -51))
    with pytest.raises(ValueRejected):
        RE(bp.scan([], x, 0, 60, 3))  # the point at 60 is refused, not clipped
    for bad in ("10\r\n1PA-50", "ten", float("nan"), None):
        with pytest.raises(ValueRejected):
            x.set(bad)
    assert pa_lines(sim) == ["1PA0", "1PA30"]  # the scan's first two points only
    assert sim.axis_position(1) == 30.0


def test_motor_off_at_connect_is_reported_and_blocks_moves(stage, caplog):
    server, controller, x, _ = stage(motors_on=False)
    with caplog.at_level(logging.WARNING, logger="daqbridge.devices.esp300"):
        controller.connect()
    assert "motor of axis 1 (x) is OFF" in caplog.text
    assert x.motor_enabled is False
    status = x.set(5.0)
    with pytest.raises(InstrumentFault, match="motor is off") as err:
        status.wait(5)
    assert err.value.code == 113 and "1MO" in str(err.value)
    assert pa_lines(server.simulator) == []


def test_motor_on_at_connect_when_the_profile_says_so(stage):
    server, controller, x, _ = stage(motors_on=False, motor_on=True)
    controller.connect()
    assert server.simulator.motor_on(1) and x.motor_enabled
    x.set(2.0).wait(5)
    assert server.simulator.axis_position(1) == 2.0


def test_motor_turned_off_later_gives_queued_error_13(stage):
    server, controller, x, _ = stage()
    controller.connect()
    with controller.port.lease("another program", 1.0) as lease:
        lease.write(b"1MF\r\n")
    status = x.set(5.0)
    with pytest.raises(InstrumentFault, match="error 113: motor not enabled") as err:
        status.wait(5)
    assert err.value.code == 113 and "x" in str(err.value)
    assert esp300_error_meaning(213) == "motor not enabled"
    with controller.port.lease("another program", 1.0) as lease:
        lease.write(b"1MO\r\n")
    x.set(1.0).wait(5)
    assert x.position == 1.0


def test_velocity_is_configuration(stage, RE):
    server, controller, x, _ = stage()
    controller.connect()
    RE(bps.mv(x.velocity, 7.5))
    assert server.simulator.axes[1].velocity == 7.5
    assert x.read_configuration()["x_velocity"]["value"] == 7.5
    x.acceleration.set(40).wait(5)
    assert server.simulator.axes[1].acceleration == 40
    with pytest.raises(ValueRejected):
        x.velocity.set(-1)
    with pytest.raises(ValueRejected):
        x.velocity.set("fast")
    with pytest.raises(ValueRejected, match="1VU"):
        x.velocity.set(10_000)  # above the maximum read at connect: refused before the wire
    with controller.port.lease("another program", 1.0) as lease:
        lease.write(b"1VU6\r\n")  # lowered behind the driver's back
    with pytest.raises(InstrumentFault, match="error 110") as err:
        x.velocity.set(7).wait(5)  # so the controller refuses it: a queued error
    assert err.value.code == 110


def test_refresh_reads_settings_changed_behind_the_drivers_back(stage):
    server, controller, x, _ = stage()
    controller.connect()
    sim = server.simulator
    with sim.lock:  # the front panel, not the driver
        sim.axes[1].velocity, sim.axes[1].acceleration, sim.axes[1].max_velocity = 3.5, 12.0, 80.0
    before = len(sim.received_lines)
    x.refresh_configuration()
    conf = {key: reading["value"] for key, reading in x.read_configuration().items()}
    assert (conf["x_velocity"], conf["x_acceleration"], conf["x_max_velocity"]) == (3.5, 12, 80)
    assert sim.received_lines[before:] == ["1ID?", "1VU?", "1VA?", "1AC?"]  # asks, sets nothing


def test_refresh_asks_what_the_shared_transcript_answers(serial_pool, transcript):
    replies = transcript_replies("driver_connect")
    peer = transcript(replies, terminator=b"\r\n")
    controller = ESP300Controller(
        serial_pool.open(peer.path, baudrate=19200), name="esp", timeout=0.5
    )
    try:
        x = controller.axis(1, name="x")
        controller.connect()
        at_connect = len(peer.received)
        refresh = transcript_replies("driver_refresh")
        peer.replies.update(refresh)
        x.refresh_configuration()
        assert peer.received[at_connect:] == list(refresh)
        assert x.velocity.get() == 5.0 and x.acceleration.get() == 20.0
    finally:
        controller.close()


@pytest.mark.parametrize(
    ("query", "reply", "error"),
    [("1ID?", None, InstrumentTimeout), ("1AC?", b"20.0x\r\n", ReplyError)],
)
def test_refresh_with_a_bad_reply_names_the_controller(
    serial_pool, transcript, query, reply, error
):
    peer = transcript(transcript_replies("driver_connect"), terminator=b"\r\n")
    controller = ESP300Controller(
        serial_pool.open(peer.path, baudrate=19200), name="esp", timeout=0.3
    )
    try:
        x = controller.axis(1, name="x")
        controller.connect()
        peer.replies.update({"1VA?": b"7.00000\r\n", query: reply})
        with pytest.raises(error) as err:
            x.refresh_configuration()
        message = str(err.value)
        assert "'esp'" in message and peer.path in message and query in message
        assert x.velocity.get() == 5.0  # no mix of fresh and stale settings
        assert x.stage_model.get() == "TS50DC.5"
    finally:
        controller.close()


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [("drop_next", InstrumentTimeout, r"no reply to '1MD\?'"), ("garble_next", ReplyError, "1MD")],
)
def test_lost_or_garbled_reply_fails_then_next_move_works(stage, fault, error, text, wait_until):
    server, controller, x, _ = stage(timeout=0.2)
    controller.connect()
    setattr(server.simulator.faults, fault, 1)
    with pytest.raises(error, match=text) as err:
        x.set(3.0).wait(5)
    assert server.path in str(err.value) and "esp" in str(err.value)
    assert wait_until(lambda: 1 in server.simulator.stops)  # lost track: it was stopped
    x.set(4.0).wait(5)
    assert x.position == 4.0


def test_unplug_fails_clearly_and_replug_recovers(stage, wait_until):
    server, controller, x, _ = stage(timeout=0.2)
    controller.connect()
    x.set(1.0).wait(5)
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)) as err:
        x.set(2.0).wait(5)
    assert server.path in str(err.value)
    server.replug()
    x.set(3.0).wait(5)  # the port reopens and the controller is re-verified
    assert x.position == 3.0 and server.simulator.axis_position(1) == 3.0
    assert controller.port.reopens >= 1


def test_close_stops_a_moving_axis(stage, wait_until):
    server, controller, x, _ = stage(speed=1.0)
    controller.connect()
    status = x.set(40.0)
    assert wait_until(lambda: server.simulator.is_moving(1))
    controller.close()
    assert 1 in server.simulator.stops
    with pytest.raises(InstrumentError):
        status.wait(5)
    with pytest.raises(InstrumentError, match="closed"):
        x.set(1.0)


def test_axis_is_an_esp300axis(stage):
    _, controller, x, y = stage()
    assert isinstance(x, ESP300Axis) and controller.axes == {1: x, 2: y}
    assert x.controller is controller


# --- stage identity (ID?) and maximum velocity (VU?), pinned to tests/transcripts/esp300.yaml --


def test_connect_asks_what_the_shared_transcript_answers(serial_pool, transcript):
    replies = transcript_replies("driver_connect")
    peer = transcript(replies, terminator=b"\r\n")
    controller = ESP300Controller(
        serial_pool.open(peer.path, baudrate=19200), name="esp", timeout=0.5
    )
    try:
        x = controller.axis(1, name="x")
        controller.connect()
        assert list(dict.fromkeys(peer.received)) == list(replies)  # every pair, in order
        conf = x.read_configuration()
        assert conf["x_stage_model"]["value"] == "TS50DC.5"
        assert conf["x_stage_serial"]["value"] == "SN1263"
        assert conf["x_max_velocity"]["value"] == 200.0
        desc = x.describe_configuration()
        assert desc["x_stage_model"]["source"].endswith("1ID?")
        assert desc["x_max_velocity"]["source"].endswith("1VU?")
    finally:
        controller.close()


@pytest.mark.parametrize(
    ("reply", "stage"),
    [(b"Unknown\r\n", ("Unknown", "")), (b"\r\n", ("", "")), (None, ("", ""))],
    ids=["no-esp-data", "empty", "silent"],
)
def test_a_stage_that_cannot_say_what_it_is_is_still_accepted(
    serial_pool, transcript, caplog, reply, stage
):
    replies = transcript_replies("driver_connect") | {"1ID?": reply}
    peer = transcript(replies, terminator=b"\r\n")
    # The silent case waits one full timeout for 1ID?: the cost of a controller without it.
    controller = ESP300Controller(
        serial_pool.open(peer.path, baudrate=19200), name="esp", timeout=1.0
    )
    try:
        x = controller.axis(1, name="x")
        with caplog.at_level(logging.WARNING, logger="daqbridge.devices.esp300"):
            assert "ESP300" in controller.connect()
        assert x.stage_identity == stage
        assert x.read_configuration()["x_stage_model"]["value"] == stage[0]
        assert ("did not answer 1ID?" in caplog.text) == (reply is None)
    finally:
        controller.close()


def test_another_stage_after_a_replug_is_an_identity_mismatch(stage):
    server, controller, x, _ = stage(timeout=1.0)
    controller.connect()
    assert x.stage_identity == ("TS50DC.5", "SN1263")
    x.set(1.0).wait(5)
    server.unplug()
    with pytest.raises((PortUnavailable, InstrumentTimeout)):
        x.set(2.0).wait(5)
    server.simulator.axes[1].stage_serial = "SN4711"  # someone swapped the stages meanwhile
    server.replug()
    with pytest.raises(IdentityMismatch, match="SN4711") as err:
        x.set(3.0).wait(5)
    assert "SN1263" in str(err.value) and server.path in str(err.value)
    assert "1PA3" not in server.simulator.received_lines


def test_a_garbled_stage_identity_after_a_replug_is_read_again(stage, monkeypatch):
    server, controller, x, _ = stage(timeout=1.0)
    controller.connect()
    x.set(1.0).wait(5)
    sim = server.simulator
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
        x.set(2.0).wait(5)
    server.replug()
    x.set(3.0).wait(5)  # not an IdentityMismatch: the second 1ID? gives the known stage
    assert garbled == [1] and sim.faults.garble_next == 0
    assert x.stage_identity == ("TS50DC.5", "SN1263")
    assert sim.received_lines.count("1ID?") == 3  # at connect, the garbled one, the check


def test_velocity_above_the_axis_maximum_is_refused_before_the_wire(stage):
    server, controller, x, _ = stage(max_velocity=20)
    controller.connect()
    assert x.max_velocity.get() == 20.0
    with pytest.raises(ValueRejected, match="1VU") as err:
        x.velocity.set(25)
    assert err.value.limit == (0.0, 20.0) and err.value.instrument == "x"
    x.velocity.set(20).wait(5)
    assert server.simulator.axes[1].velocity == 20.0
    assert not any(line.startswith("1VA25") for line in server.simulator.received_lines)


def test_profile_velocity_above_the_axis_maximum_fails_connect_clearly(serial_pool):
    with serve_pty("esp300", speed=FAST) as server:
        port = serial_pool.open(server.path, baudrate=19200)
        controller = ESP300Controller(port, name="esp", timeout=0.5)
        try:
            controller.axis(1, name="x", velocity=300)
            with pytest.raises(ValueRejected, match="from the profile") as err:
                controller.connect()
            assert "200" in str(err.value) and err.value.instrument == "x"
            assert not any(line.startswith("1VA") for line in server.simulator.received_lines)
        finally:
            controller.close()
