"""LegacyDevice: any legacy instrument as an ophyd-async device, under a real RunEngine.

The instruments here are small LegacyInstrument subclasses written for these tests (the adapter
must work with ANY driver), plus the real legacy 1830-C and Elliptec drivers against their
simulators on real ptys, and a native 1830-C in the same run, read back from a real catalog.
"""

from __future__ import annotations

import threading
import time
import warnings

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
from bluesky.protocols import (
    Configurable,
    Locatable,
    Movable,
    Readable,
    Stoppable,
    Subscribable,
    Triggerable,
)
from bluesky.utils import FailedStatus
from ophyd_async.core import SignalRW, SignalW

from daqbridge.bridge.legacy_adapter import (
    Field,
    LegacyDevice,
    SetNotConfirmed,
)
from daqbridge.devices.core import call_sync
from daqbridge.errors import ConfigError, InstrumentFault, InstrumentTimeout, ValueRejected
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    LegacyInstrument,
    LegacyRuntime,
    Measurement,
    ParameterInfo,
    parse_legacy_config,
)
from daqbridge.sim import serve_pty


def on_loop(work, timeout=10.0):
    """``work`` (an awaitable, or a function called there) on the RunEngine's loop, where the
    devices live; needs the ``RE`` fixture."""
    return call_sync(work, timeout=timeout)


def connect(dev, timeout=10.0):
    on_loop(lambda: dev.connect(timeout=timeout), timeout=timeout + 1)


def done(make_status, timeout=10.0):
    """Start an operation on the loop (``lambda: dev.set(1)``) and wait for its status."""
    status = started(make_status)
    on_loop(status, timeout=timeout)
    return status


def started(make_status):
    """The status of an operation started on the loop, not waited for."""
    return on_loop(lambda: [make_status()])[0]


def latest(sig):
    """What a signal shows now (no command: its backend's latest report)."""
    return sig.backend.reading()["value"]


def wait_until(predicate, timeout=5.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Rotator(LegacyInstrument):
    """A rotation stage in the legacy style: channel ``angle`` (deg, queryable and settable),
    channel ``temperature`` (published by polls only), setting ``speed``; knobs for faults."""

    def __init__(self, instrument_id: str = "rot") -> None:
        super().__init__(instrument_id)
        self.angle = 0.0
        self.speed = 5.0
        self.temperature = 21.0
        self.commands: list[Command] = []
        self.slip = 0.0  # a set that "succeeds" but lands this far off
        self.refuse_next = False  # the instrument refuses the next set (local mode)
        self.fail_queries = 0  # the next N queries fail with the instrument's error
        self.query_delay = 0.0  # seconds each query takes (a slow legacy call)
        self.move_time = 0.0
        self.lag_reads = 0  # queries after a set that still report the old angle (settling)
        self._lagging: list[float] = []
        self.stops = 0
        self._stop = threading.Event()
        self.moving = threading.Event()

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def stop(self) -> bool:
        self.stops += 1
        self._stop.set()
        return True

    def poll(self) -> list[Measurement]:
        self.temperature += 0.01
        return [
            self.measurement("angle", self.angle),
            self.measurement("temperature", self.temperature),
        ]

    def handle(self, command: Command) -> CommandResult:
        self.commands.append(command)
        if command.kind == "set" and command.name == "angle":
            if self.refuse_next:
                self.refuse_next = False
                return CommandResult.failure(
                    InstrumentFault(
                        "controller in LOCAL mode, command ignored",
                        code="E12",
                        instrument=self.instrument_id,
                    )
                )
            self._stop.clear()
            self.moving.set()
            try:
                if self.move_time and self._stop.wait(self.move_time):
                    return CommandResult.failure(
                        f"stopped at {self.angle:.2f} deg", instrument=self.instrument_id
                    )
            finally:
                self.moving.clear()
            self._lagging = [self.angle] * self.lag_reads
            self.angle = float(command.value) + self.slip
            return CommandResult.success(self.angle)
        if command.kind == "set" and command.name == "speed":
            self.speed = self.check_value("speed", command.value)
            return CommandResult.success(self.speed)
        if command.kind == "query":
            if self.query_delay:
                time.sleep(self.query_delay)
            if self.fail_queries:
                self.fail_queries -= 1
                return CommandResult.failure(
                    InstrumentFault(
                        "encoder error 7: index pulse missing",
                        code="7",
                        instrument=self.instrument_id,
                    )
                )
            if command.name == "angle":
                if self._lagging:
                    return CommandResult.success(self._lagging.pop())
                return CommandResult.success(self.angle)
            if command.name == "speed":
                return CommandResult.success(self.speed)
        return CommandResult.failure(f"unknown {command}", instrument=self.instrument_id)

    def channels(self) -> dict[str, ChannelInfo]:
        return {
            "angle": ChannelInfo("angle", "deg", "number"),
            "temperature": ChannelInfo("temperature", "degC", "number"),
        }

    def parameters(self) -> dict[str, ParameterInfo]:
        return {
            "angle": ParameterInfo("angle", "deg", limits=(-180.0, 180.0)),
            "speed": ParameterInfo("speed", "deg/s", limits=(0.1, 50.0)),
        }


@pytest.fixture
def rotator_runtime():
    made: list[LegacyRuntime] = []

    def make(rate: float = 50.0, instrument: LegacyInstrument | None = None):
        rt = LegacyRuntime()
        inst = instrument or Rotator()
        rt.add(inst, rate)
        rt.start()
        assert rt.wait_running(5), rt.health()
        made.append(rt)
        return rt, inst

    yield make
    for rt in made:
        rt.stop(2)


def test_protocols_and_movable_only_when_settable(rotator_runtime):
    rt, _ = rotator_runtime()
    dev = LegacyDevice(rt, "rot")
    for proto in (Readable, Movable, Triggerable, Stoppable, Configurable, Subscribable, Locatable):
        assert isinstance(dev, proto), proto
    assert dev.settable == "angle"  # the one read channel that is also settable
    read_only = LegacyDevice(rt, "rot", name="rot_ro", settable=False)
    assert not isinstance(read_only, Movable) and isinstance(read_only, Readable)
    assert isinstance(read_only, Triggerable) and isinstance(read_only, Subscribable)
    dev.close(), read_only.close()


def test_describe_hints_and_configuration_come_from_the_instrument(rotator_runtime, RE):
    rt, _ = rotator_runtime()
    dev = LegacyDevice(rt, "rot", name="stage")
    connect(dev)
    desc = on_loop(dev.describe())
    assert set(desc) == {"stage_angle", "stage_temperature"}
    assert desc["stage_angle"]["units"] == "deg" and desc["stage_angle"]["dtype"] == "number"
    assert desc["stage_angle"]["source"] == "legacy:rot/angle"
    assert desc["stage_temperature"]["units"] == "degC"
    assert dev.hints == {"fields": ["stage_angle"]}
    conf = on_loop(dev.read_configuration())
    assert conf["stage_speed"]["value"] == 5.0  # queried at connect
    assert on_loop(dev.describe_configuration())["stage_speed"]["units"] == "deg/s"
    dev.close()


def test_count_and_scan_with_a_legacy_device(rotator_runtime, RE, docs):
    rt, rot = rotator_runtime()
    dev = LegacyDevice(rt, "rot", name="stage")
    connect(dev)
    RE(bp.scan([], dev, -10, 10, 5))
    docs.validate()
    events = docs.events()
    assert [e["data"]["stage_angle"] for e in events] == [-10, -5, 0, 5, 10]
    assert all(isinstance(e["data"]["stage_temperature"], float) for e in events)
    sets = [c.value for c in rot.commands if c.kind == "set"]
    assert sets == [-10, -5, 0, 5, 10]
    assert dev.position == 10

    before = len(docs.events())
    RE(bp.count([dev], 3))
    docs.validate()
    assert [e["data"]["stage_angle"] for e in docs.events()[before:]] == [10, 10, 10]
    (desc,) = [d for d in docs.of("descriptor")[-1:]]
    assert desc["configuration"]["stage"]["data"]["stage_speed"] == 5.0
    dev.close()


def test_fresh_trigger_queries_and_waits_for_streamed_channels(rotator_runtime, RE):
    rt, rot = rotator_runtime(rate=50)
    dev = LegacyDevice(rt, "rot")
    t0 = time.time()
    done(dev.trigger, timeout=5)
    reading = on_loop(dev.read())
    assert any(c.kind == "query" and c.name == "angle" for c in rot.commands)
    # temperature is not queryable: the trigger waited for a measurement published after it
    assert reading["rot_temperature"]["timestamp"] >= t0
    dev.close()


def test_latest_mode_sends_nothing_and_keeps_measurement_timestamps(rotator_runtime, RE):
    rt, rot = rotator_runtime(rate=50)
    seen: list[Measurement] = []
    rt.distributor.subscribe(seen.append, name="test-feed")
    dev = LegacyDevice(rt, "rot", read_mode="latest")
    # construction asks for the settings once, without waiting (configuration without connect)
    assert wait_until(lambda: on_loop(dev.read_configuration())["rot_speed"]["value"] == 5.0)
    assert wait_until(lambda: len(seen) >= 4)
    sent = len(rot.commands)
    done(dev.trigger, timeout=2)
    reading = on_loop(dev.read())
    assert rot.commands[sent:] == []
    published = {(m.channel, m.timestamp) for m in list(seen)}
    assert ("temperature", reading["rot_temperature"]["timestamp"]) in published
    dev.close()


def test_set_is_confirmed_by_the_read_back(rotator_runtime, RE):
    rt, rot = rotator_runtime()
    dev = LegacyDevice(rt, "rot")
    connect(dev)  # its own queries are done: what follows is the set's
    sent = len(rot.commands)
    st = done(lambda: dev.set(42.5), timeout=5)
    assert st.success and rot.angle == 42.5
    # one set, then one read-back: never a read-back asked before the set
    assert [(c.kind, c.name) for c in rot.commands[sent:]] == [("set", "angle"), ("query", "angle")]
    assert dev.position == 42.5 and on_loop(dev.locate())["readback"] == 42.5
    dev.close()


def test_set_not_reached_fails_with_what_the_instrument_reports(rotator_runtime, RE):
    rt, rot = rotator_runtime()
    rot.slip = 0.5  # lands 0.5 deg off: 1e-4 of the 360 deg span is the default tolerance
    dev = LegacyDevice(rt, "rot")
    with pytest.raises(SetNotConfirmed, match=r"instrument reports 10\.5"):
        done(lambda: dev.set(10.0), timeout=5)
    tolerant = LegacyDevice(rt, "rot", name="tolerant", tolerance=1.0)
    done(lambda: tolerant.set(20.0), timeout=5)
    assert tolerant.position == 20.5
    dev.close(), tolerant.close()


def test_a_read_back_still_settling_is_asked_again_until_it_reports_the_target(rotator_runtime, RE):
    rt, rot = rotator_runtime(rate=0)
    dev = LegacyDevice(rt, "rot")
    connect(dev)
    rot.lag_reads = 2  # the driver says done; the next two read-backs still say 0 deg
    st = done(lambda: dev.set(30.0), timeout=10)
    assert st.success and dev.position == 30.0
    asked = [c.name for c in rot.commands if c.kind == "query"]
    assert asked[-3:] == ["angle"] * 3  # two early read-backs, then the settled one
    dev.close()


def test_refused_set_fails_the_status_with_the_instruments_message(rotator_runtime, RE):
    rt, rot = rotator_runtime()
    dev = LegacyDevice(rt, "rot")
    rot.refuse_next = True
    with pytest.raises(FailedStatus) as info:
        RE(bps.mv(dev, 30))
    assert "LOCAL mode" in str(info.value.args[0].exception())
    assert isinstance(info.value.args[0].exception(), InstrumentFault)
    RE(bps.mv(dev, 30))  # the next move works
    assert rot.angle == 30
    dev.close()


def test_values_are_checked_before_anything_is_sent(rotator_runtime, RE):
    rt, rot = rotator_runtime()
    dev = LegacyDevice(rt, "rot")
    for bad in (500, "ten", float("nan"), True):
        with pytest.raises(ValueRejected):
            on_loop(lambda bad=bad: dev.set(bad))  # refused at once: no status is made
    assert not [c for c in rot.commands if c.kind == "set"]
    dev.close()


def test_legacy_error_becomes_a_failed_trigger_and_the_next_one_works(rotator_runtime, RE):
    rt, rot = rotator_runtime()
    dev = LegacyDevice(rt, "rot")
    connect(dev)  # its own setting queries are done: the next query is the trigger's
    rot.fail_queries = 1
    with pytest.raises(FailedStatus) as info:
        RE(bp.count([dev], 1))
    err = info.value.args[0].exception()
    assert isinstance(err, InstrumentFault) and "index pulse missing" in str(err)
    RE(bp.count([dev], 1))  # recovered
    dev.close()


def test_command_that_never_returns_times_out_with_the_instruments_activity(rotator_runtime, RE):
    rt, rot = rotator_runtime()
    dev = LegacyDevice(rt, "rot", timeout=0.2)
    connect(dev, timeout=5)
    rot.query_delay = 1.0
    with pytest.raises(InstrumentTimeout, match="did not finish within 0.2 s"):
        done(dev.trigger, timeout=5)
    dev.close()


def test_a_set_that_times_out_while_queued_is_never_sent_late(rotator_runtime, RE):
    rt, rot = rotator_runtime(rate=0)
    dev = LegacyDevice(rt, "rot", set_timeout=0.2)
    connect(dev)
    rot.query_delay = 1.0
    busy = rt.submit_future("rot", Command.query("speed"))  # the worker is busy for 1 s
    with pytest.raises(InstrumentTimeout, match="did not finish within 0.2 s"):
        done(lambda: dev.set(45.0), timeout=5)
    assert busy.result(timeout=5).ok
    rot.query_delay = 0.0
    # The worker runs its queue in order: once this query is answered, a set still queued
    # behind the busy query would have run.
    assert rt.submit("rot", Command.query("angle"), timeout=5).ok
    assert not [c for c in rot.commands if c.kind == "set"]
    assert rot.angle == 0.0
    dev.close()


def test_subscribers_see_what_the_stream_reports_on_the_loop(legacy_laser, RE):
    laser, sim, rt = legacy_laser
    seen: list[tuple[int, bool]] = []
    loop = RE.loop

    def on_reading(readings):
        # delivered on the device's loop, not the distributor's thread
        seen.append((readings["sim_laser_shutter"]["value"], _running_loop() is loop))

    on_loop(lambda: laser.shutter.subscribe_reading(on_reading))
    try:
        assert rt.submit("laser", Command.set("shutter", 0), timeout=5).ok  # not through us
        assert wait_until(lambda: (0, True) in seen)
        assert all(on_the_loop for _, on_the_loop in seen)
    finally:
        on_loop(lambda: laser.shutter.clear_sub(on_reading))
        assert rt.submit("laser", Command.set("shutter", 1), timeout=5).ok


def _running_loop():
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def test_slow_legacy_call_does_not_block_the_run_engine_loop(rotator_runtime, RE):
    rt, rot = rotator_runtime(rate=0)
    dev = LegacyDevice(rt, "rot")
    connect(dev)
    rot.query_delay = 1.0
    ticks_while_pending: list[int] = []

    def plan():
        status = yield from bps.trigger(dev, group="slow")
        n = 0
        while not status.done and n < 1000:
            yield from bps.sleep(0.01)  # runs on the loop: impossible if the loop were blocked
            n += 1
        ticks_while_pending.append(n)
        yield from bps.wait(group="slow")

    RE(plan())
    assert ticks_while_pending[0] >= 5, ticks_while_pending
    dev.close()


def test_stop_halts_a_long_move(rotator_runtime, RE):
    rt, rot = rotator_runtime(rate=0)
    rot.move_time = 30.0
    dev = LegacyDevice(rt, "rot")
    st = started(lambda: dev.set(90))
    assert wait_until(rot.moving.is_set)
    dev.stop()
    with pytest.raises(Exception, match="stopped at"):
        on_loop(st, timeout=5)
    # stop() records its result on its helper thread, which may finish after the move failed
    assert wait_until(lambda: dev.last_stop_result is not None)
    assert rot.stops >= 1 and dev.last_stop_result.ok


def test_monitor_records_the_legacy_stream_as_its_own_event_stream(rotator_runtime, RE, docs):
    rt, rot = rotator_runtime(rate=100)
    published: list[Measurement] = []
    rt.distributor.subscribe(published.append, name="truth")
    dev = LegacyDevice(rt, "rot", name="stage")

    def plan():
        yield from bps.open_run()
        yield from bps.monitor(dev, name="stage_stream")
        yield from bps.trigger_and_read([dev])
        yield from bps.sleep(0.3)
        yield from bps.unmonitor(dev)
        yield from bps.close_run()

    RE(plan())
    docs.validate()
    streams = {d["uid"]: d["name"] for d in docs.of("descriptor")}
    assert sorted(streams.values()) == ["primary", "stage_stream"]
    monitored = [e for e in docs.events() if streams[e["descriptor"]] == "stage_stream"]
    assert len(monitored) >= 5
    truth = {(m.channel, m.timestamp): m.value for m in list(published)}
    for e in monitored[1:]:  # the first one is the value current when the monitor started
        assert (
            truth[("temperature", e["timestamps"]["stage_temperature"])]
            == e["data"]["stage_temperature"]
        )
        assert truth[("angle", e["timestamps"]["stage_angle"])] == e["data"]["stage_angle"]
    temps = [e["timestamps"]["stage_temperature"] for e in monitored[1:]]
    assert temps == sorted(temps) and len(set(temps)) == len(temps)  # one event per poll
    # after unmonitor nothing more is emitted
    n = len(docs.items)
    time.sleep(0.1)
    assert len(docs.items) == n
    dev.close()


def test_bad_construction_is_a_clear_config_error(rotator_runtime):
    rt, _ = rotator_runtime()
    with pytest.raises(ConfigError, match="no legacy instrument named 'nope'.*known: \\['rot'\\]"):
        LegacyDevice(rt, "nope")
    with pytest.raises(ConfigError, match="unknown \\['pressure'\\]"):
        LegacyDevice(rt, "rot", channels=["pressure"])
    with pytest.raises(ConfigError, match="list of channel names"):
        LegacyDevice(rt, "rot", channels="angle")
    with pytest.raises(ConfigError, match="not a settable parameter"):
        LegacyDevice(rt, "rot", settable="temperature")
    with pytest.raises(ConfigError, match="read_mode"):
        LegacyDevice(rt, "rot", read_mode="sometimes")
    with pytest.raises(ConfigError, match="needs a LegacyRuntime"):
        LegacyDevice(object(), "rot")
    with pytest.raises(ConfigError, match=r"tolerance names \['temperature'\]"):
        LegacyDevice(rt, "rot", tolerance={"temperature": 0.1})


# --- real legacy drivers on simulators ---------------------------------------------------------


def _legacy_runtime(pool, toml: str) -> LegacyRuntime:
    rt = LegacyRuntime.from_config(parse_legacy_config(toml, source="test.toml"), pool)
    rt.start()
    assert rt.wait_running(10), rt.health()
    return rt


def test_one_elliptec_mount_of_a_legacy_bus(serial_pool, RE, docs):
    with serve_pty("elliptec", addresses=[2, 3], speed=50) as server:
        rt = _legacy_runtime(
            serial_pool,
            f"""
[instruments.mounts]
type = "elliptec"
port = "{server.path}"
device_addresses = [2, 3]
polling_rate_hz = 5
command_spacing_s = 0.0
""",
        )
        try:
            mount = LegacyDevice(
                rt,
                "mounts",
                name="hwp",
                channels=["position_2"],
                settable="position_2",
                set_timeout=15,
            )
            connect(mount)
            described = on_loop(mount.describe())
            assert list(described) == ["hwp_position_2"]
            assert described["hwp_position_2"]["units"] == "deg"
            RE(bp.scan([], mount, 0, 90, 3))
            docs.validate()
            got = [e["data"]["hwp_position_2"] for e in docs.events()]
            assert got == pytest.approx([0, 45, 90], abs=0.05)
            assert server.simulator.position_deg(2) == pytest.approx(90, abs=0.05)
            assert server.simulator.position_deg(3) == pytest.approx(0, abs=0.05)
            mount.close()
        finally:
            rt.stop(5)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from daqbridge.catalog import open_catalog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = open_catalog(tmp_path_factory.mktemp("adapter-catalog"))
    yield cat
    cat.close()


def test_native_and_legacy_devices_in_one_run_read_back_from_the_catalog(
    serial_pool, RE, docs, catalog, rotator_runtime
):
    from daqbridge.devices.newport1830c import Newport1830C

    rt_rot, rot = rotator_runtime(rate=20)
    with (
        serve_pty("newport1830c", noise=0, input_power=2.5e-6, speed=100) as meter_a,
        serve_pty("newport1830c", noise=0, input_power=7.5e-7, speed=100) as meter_b,
    ):
        rt = _legacy_runtime(
            serial_pool,
            f"""
[instruments.meter_b]
type = "newport_1830c"
port = "{meter_b.path}"
polling_rate_hz = 0
""",
        )
        try:
            native = Newport1830C(serial_pool.open(meter_a.path, baudrate=9600), name="meter_a")
            call_sync(native.connect(), timeout=10)  # ophyd-async: on the RunEngine's loop
            legacy_meter = LegacyDevice(rt, "meter_b")
            connect(legacy_meter)
            stage = LegacyDevice(rt_rot, "rot", name="stage")
            RE.subscribe(catalog.writer)
            (uid,) = RE(bp.scan([native, legacy_meter], stage, 0, 30, 4))
            docs.validate()
            catalog.flush()
            run = catalog[uid]
            data = run["primary"].read()
            assert list(data["meter_a_power"].values) == pytest.approx([2.5e-6] * 4)
            assert list(data["meter_b_power"].values) == pytest.approx([7.5e-7] * 4)
            assert list(data["stage_angle"].values) == [0, 10, 20, 30]
            keys = run.metadata["start"]["detectors"]
            assert keys == ["meter_a", "meter_b"]
            (desc,) = docs.of("descriptor")
            assert desc["data_keys"]["meter_b_power"]["source"] == "legacy:meter_b/power"
            assert desc["configuration"]["meter_b"]["data"]["meter_b_wavelength"] == 800
            native.close(), legacy_meter.close(), stage.close()
        finally:
            rt.stop(5)


# --- every parameter of a legacy instrument, set on the instrument (issue 18 item 1, issue 12) --
#
# The legacy MaiTai has two settable parameters, so its adapter has no single ``set()``: each
# settable channel is its own read-write signal. These tests ask the MaiTai simulator (its own
# state, not what the adapter believes) what really happened.


@pytest.fixture
def legacy_laser(serial_pool, RE):
    """The legacy MaiTai driver on a simulated laser (warm, emitting, shutter open) on a pty,
    wrapped whole as ``sim_laser`` the way the runtime wraps it (no ``settable``)."""
    with serve_pty(
        "maitai", warmed_up=True, emission_on=True, shutter_open=True, speed=20
    ) as server:
        rt = _legacy_runtime(
            serial_pool,
            f"""
[instruments.laser]
type = "maitai"
port = "{server.path}"
polling_rate_hz = 20
readback_timeout_s = 0.3
""",
        )
        laser = LegacyDevice(rt, "laser", name="sim_laser")
        try:
            connect(laser)
            yield laser, server.simulator, rt
        finally:
            laser.close()
            rt.stop(5)


def read_in_plan(RE, obj):
    """``bps.rd(obj)`` inside a plan, as a scientist would write it."""
    got = []

    def plan():
        got.append((yield from bps.rd(obj)))

    RE(plan())
    return got[0]


def test_moving_the_shutter_commands_the_laser_and_reads_back_what_it_reports(legacy_laser, RE):
    laser, sim, rt = legacy_laser
    assert laser.settable is None  # two settable parameters: no device-level set()
    RE(bps.mv(laser.shutter, 0))
    assert sim.shutter_open is False  # the laser itself closed it
    assert read_in_plan(RE, laser.shutter) == 0
    assert rt.submit("laser", Command.query("shutter"), timeout=5).value == 0
    RE(bps.mv(laser.shutter, 1))
    assert sim.shutter_open is True
    assert read_in_plan(RE, laser.shutter) == 1


def test_a_shutter_command_the_laser_ignores_fails_and_records_what_it_reports(legacy_laser, RE):
    laser, sim, _ = legacy_laser
    sim.set_local_mode(True)  # front panel: SHUTTER 0 is accepted and ignored
    with pytest.raises(FailedStatus) as info:
        RE(bps.mv(laser.shutter, 0))
    err = info.value.args[0].exception()
    assert isinstance(err, InstrumentFault), err
    text = str(err)
    assert "'laser'" in text and "shutter did not close" in text and "Fix:" in text, text
    assert sim.shutter_open is True
    assert read_in_plan(RE, laser.shutter) == 1  # the beam is NOT blocked, and we say so


def test_tuning_records_the_lasers_read_back_not_the_command(legacy_laser, RE, docs):
    laser, sim, _ = legacy_laser
    RE(bp.list_scan([], laser.wavelength, [760, 790]))
    docs.validate()
    assert [e["data"]["sim_laser_wavelength"] for e in docs.events()] == [760.0, 790.0]
    assert sim.wavelength_nm() == 790.0
    # The laser reports whole nm: 760.4 is reported as 760, which the default tolerance
    # (1e-4 of the 690-1040 nm span) does not accept, so nothing claims 760.4 was reached.
    with pytest.raises(FailedStatus) as info:
        RE(bps.mv(laser.wavelength, 760.4))
    err = info.value.args[0].exception()
    assert isinstance(err, SetNotConfirmed), err
    assert "wavelength" in str(err) and "instrument reports 760" in str(err), err
    assert read_in_plan(RE, laser.wavelength) == 760.0


def test_a_per_parameter_tolerance_keeps_the_reported_value(legacy_laser, RE):
    laser, sim, rt = legacy_laser
    tolerant = LegacyDevice(rt, "laser", name="tolerant", tolerance={"wavelength": 1.0})
    try:
        RE(bps.mv(tolerant.wavelength, 760.4))
        assert sim.target_wavelength_nm() == 760.4
        assert read_in_plan(RE, tolerant.wavelength) == 760.0  # what the laser said
    finally:
        tolerant.close()


def test_measured_channels_are_read_only(legacy_laser, RE):
    laser, _, rt = legacy_laser
    # nothing to command: no set, so no plan can move it and the IOC serves it read-only
    for measured in (laser.power, laser.warmup):
        assert not isinstance(measured, SignalW) and not isinstance(measured, Movable)
    assert isinstance(laser.shutter, SignalRW) and isinstance(laser.wavelength, Movable)
    with pytest.raises(AssertionError, match="does not implement all Movable methods"):
        RE(bps.mv(laser.warmup, 50))  # bluesky says so before anything is sent
    # the laser's state is static here, so the signal still shows exactly its report
    assert latest(laser.power) == rt.submit("laser", Command.query("power"), 5).value


def test_get_follows_the_instrument_without_a_trigger(legacy_laser):
    laser, sim, rt = legacy_laser
    assert wait_until(lambda: latest(laser.shutter) == 1)
    # someone else (legacy code, the front panel) closes the shutter
    assert rt.submit("laser", Command.set("shutter", 0), timeout=5).ok
    assert sim.shutter_open is False
    assert wait_until(lambda: latest(laser.shutter) == 0)  # the next poll says so, no trigger()
    with sim.lock:
        sim.shutter_open = True  # opened at the front panel: only a poll can tell
    assert wait_until(lambda: latest(laser.shutter) == 1)


# --- the native driver's names (issue 18 item 3): fields ----------------------------------------


def test_fields_show_the_instrument_under_other_names_kinds_and_precision(
    rotator_runtime, RE, docs
):
    rt, rot = rotator_runtime(rate=50)
    rot.slip = 0.004  # lands a little off: the read-back and the setpoint differ, both true
    stage = LegacyDevice(
        rt,
        "rot",
        name="stage",
        settable="angle",
        tolerance=0.01,
        fields={
            "angle": Field(
                "readback",
                "hinted",
                key="",
                precision=2,
                setpoint="setpoint",
                describe_limits=False,
            ),
            "temperature": Field("temperature", "config", precision=1),
            "speed": Field("velocity", "config"),
        },
    )
    try:
        connect(stage)
        assert [a for a, _ in stage.children()] == [
            "readback",
            "setpoint",
            "temperature",
            "velocity",
        ]
        described = on_loop(stage.describe())
        assert list(described) == ["stage", "stage_setpoint"]
        assert described["stage"]["precision"] == 2 and "limits" not in described["stage"]
        assert set(on_loop(stage.describe_configuration())) == {
            "stage_temperature",
            "stage_velocity",
        }
        assert stage.hints == {"fields": ["stage"]}
        stage.angle_limits = (-90, 90)  # what the runtime sets from the profile
        assert on_loop(stage.describe())["stage"]["limits"] == {"control": {"low": -90, "high": 90}}
        assert stage.limits == (-90, 90)
        # a channel shown as configuration follows the stream, read by no trigger
        assert wait_until(lambda: latest(stage.temperature) > 0)  # NaN until the first poll
        before = latest(stage.temperature)
        assert wait_until(lambda: latest(stage.temperature) > before)
        RE(bp.scan([], stage, 0, 10, 2))
        docs.validate()
        got = [(e["data"]["stage"], e["data"]["stage_setpoint"]) for e in docs.events()]
        assert got == [(0.004, 0.0), (10.004, 10.0)]  # what it reports, what it was told
        assert rot.angle == 10.004
        RE(bps.mv(stage.velocity, 7.5))
        assert rot.speed == 7.5 and read_in_plan(RE, stage.velocity) == 7.5
    finally:
        stage.close()


def test_fields_that_do_not_fit_the_instrument_are_a_clear_config_error(rotator_runtime):
    rt, _ = rotator_runtime()
    with pytest.raises(ConfigError, match=r"'nope' is neither a channel nor a queryable"):
        LegacyDevice(rt, "rot", fields={"nope": Field("nope")})
    with pytest.raises(ConfigError, match=r"attributes \['x'\] are repeated"):
        LegacyDevice(rt, "rot", fields={"angle": Field("x"), "speed": Field("x")})
    with pytest.raises(ConfigError, match=r"'angle': kind 'loud' or dtype None is not known"):
        LegacyDevice(rt, "rot", fields={"angle": Field("a", "loud")})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="channels and configuration cannot be given"):
        LegacyDevice(rt, "rot", channels=["angle"], fields={"angle": Field("angle")})


def test_codes_record_the_meters_own_codes_and_sets_map_back(serial_pool, RE):
    with serve_pty("newport1830c", noise=0, input_power=1e-6, speed=100) as server:
        rt = _legacy_runtime(
            serial_pool,
            f"""
[instruments.meter]
type = "newport_1830c"
port = "{server.path}"
polling_rate_hz = 0
""",
        )
        meter = LegacyDevice(
            rt,
            "meter",
            fields={
                "power": Field("power", "hinted"),
                "filter": Field(
                    "filter", "config", dtype="integer", codes={"slow": 1, "medium": 2, "fast": 3}
                ),
                "attenuator": Field("attenuator", "config", dtype="integer"),
            },
        )
        try:
            connect(meter)
            conf = on_loop(meter.describe_configuration())
            assert set(conf) == {"meter_filter", "meter_attenuator"}  # no units: not asked for
            assert conf["meter_filter"]["dtype"] == conf["meter_attenuator"]["dtype"] == "integer"
            assert latest(meter.filter) == server.simulator.filter == 3  # F3: "fast"
            RE(bps.mv(meter.filter, 1, meter.attenuator, 1))
            assert server.simulator.filter == 1 and server.simulator.attenuator is True
            assert read_in_plan(RE, meter.filter) == 1
            assert read_in_plan(RE, meter.attenuator) == 1
            assert rt.submit("meter", Command.query("filter"), timeout=5).value == "slow"
            RE(bps.mv(meter.filter, "fast"))  # the legacy driver's name works too
            assert server.simulator.filter == 3 and read_in_plan(RE, meter.filter) == 3
        finally:
            meter.close()
            rt.stop(5)


def test_emission_is_a_setting_of_the_legacy_laser(legacy_laser, RE):
    laser, sim, _ = legacy_laser
    assert "sim_laser_emission" in on_loop(laser.describe_configuration())
    try:
        RE(bps.mv(laser.emission, 0))
        assert sim.emission is False  # the laser itself turned off
        assert read_in_plan(RE, laser.emission) == 0
    finally:
        RE(bps.mv(laser.emission, 1))
    assert sim.emission is True and read_in_plan(RE, laser.emission) == 1
