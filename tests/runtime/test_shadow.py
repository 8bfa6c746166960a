"""Shadow mode: the legacy and the native 1830-C driver on ONE port to the simulator.

The simulator's optical input is the truth: with noise=0 both drivers must read exactly it, and a
change of the light between the two reads of a pair (or a garbled reply) must be reported.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
import warnings

import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from daqbridge.bridge._shadow import (
    ShadowComparison,
    ShadowReport,
    agree,
    compare,
    shadow_compare_plan,
)
from daqbridge.bridge.legacy_adapter import LegacyDevice
from daqbridge.catalog import DATA_ENV
from daqbridge.cli import main
from daqbridge.devices.core import call_sync
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.errors import ConfigError
from daqbridge.legacy import LegacyRuntime, parse_legacy_config
from daqbridge.sim import Newport1830CSimulator, serve_pty
from daqbridge.transport import SerialPortPool


class Light:
    """The optical input: ``watts``, except on the ``glitch_at``-th reading (counted from arm)."""

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self.glitch_at: int | None = None
        self.glitch_watts = 0.0
        self._calls = itertools.count()

    def arm(self, glitch_at: int, watts: float) -> None:
        self._calls = itertools.count()
        self.glitch_at, self.glitch_watts = glitch_at, watts

    def __call__(self) -> float:
        i = next(self._calls)
        return self.glitch_watts if i == self.glitch_at else self.watts


@pytest.fixture
def shadow_pair():
    """(simulator, light, native device, legacy adapter) on one pty and one SerialPortPool."""
    light = Light(1.5e-6)
    sim = Newport1830CSimulator(optical_input=light, noise=0, speed=100)
    with SerialPortPool() as pool, serve_pty(sim) as server:
        cfg = parse_legacy_config(
            f"""
[instruments.meter_legacy]
type = "newport_1830c"
port = "{server.path}"
polling_rate_hz = 0
""",
            source="test.toml",
        )
        rt = LegacyRuntime.from_config(cfg, pool)
        rt.start()
        assert rt.wait_running(10), rt.health()
        port = pool.open(server.path, baudrate=9600)
        native = Newport1830C(port, name="meter")
        call_sync(native.connect(), timeout=10)  # ophyd-async: a coroutine, run on a loop
        legacy = LegacyDevice(rt, "meter_legacy")
        call_sync(legacy.connect(), timeout=10)
        try:
            yield sim, light, native, legacy
        finally:
            legacy.close()
            native.close()
            rt.stop(5)


def test_agreement_rules():
    assert agree(1.0, 1.0) and not agree(1.0, 1.0 + 1e-12)
    assert agree(1.0, 1.1, tolerance=0.1 + 1e-12) and agree(100.0, 101.0, rtol=0.01)
    assert agree(math.nan, math.nan) and not agree(math.nan, 1.0)
    report = compare([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], tolerance=0.1, instrument="m")
    assert report.n == 3 and [d.index for d in report.disagreements] == [1]
    assert report.mean_difference == pytest.approx(-0.5 / 3)
    assert report.max_abs_difference == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not paired"):
        compare([1.0], [])
    with pytest.raises(ConfigError, match="tolerance must be a finite number >= 0"):
        compare([1.0], [1.0], tolerance=-1)


def test_both_drivers_read_the_simulators_truth(shadow_pair):
    sim, light, native, legacy = shadow_pair
    report = ShadowComparison(native, legacy).run(10)
    assert report.ok, report.format()
    assert report.n == 10 and report.mean_abs_difference == 0 and report.max_abs_difference == 0
    assert report.native_values == [1.5e-6] * 10 and report.legacy_values == [1.5e-6] * 10
    assert report.native_read_s > 0 and report.legacy_read_s > 0 and report.time_ratio > 1
    # both drivers really went to the wire, on the same port, alternately
    assert sim.received_lines.count("D?") >= 20
    text = report.format()
    assert "AGREE" in text and "pairs compared        10" in text


def test_light_changing_between_the_two_reads_is_a_disagreement(shadow_pair):
    sim, light, native, legacy = shadow_pair
    # Pair 2 is read native first (call 4), then legacy (call 5): the legacy read sees 2 uW.
    light.arm(glitch_at=5, watts=2.0e-6)
    report = ShadowComparison(native, legacy, rtol=1e-3).run(6)
    assert not report.ok and report.n == 6 and not report.failures
    (d,) = report.disagreements
    assert (d.index, d.native, d.legacy) == (2, 1.5e-6, 2.0e-6)
    assert d.difference == pytest.approx(-0.5e-6)
    assert report.max_abs_difference == pytest.approx(0.5e-6)
    assert report.mean_abs_difference == pytest.approx(0.5e-6 / 6)
    assert "DISAGREE" in report.format() and "2e-06" in report.format()


def test_garbled_reply_is_reported_as_a_failed_read(shadow_pair):
    sim, light, native, legacy = shadow_pair
    sim.faults.garble_next = 1  # the very next reply: the native read of pair 0
    report = ShadowComparison(native, legacy).run(4)
    assert not report.ok
    assert not report.disagreements  # a corrupted value never counts as a reading
    (failure,) = report.failures
    assert failure.index == 0 and failure.side == "native"
    assert "meter" in failure.message
    assert report.n == 3  # the other pairs were read and agree


def test_plan_records_both_readings_and_the_difference(shadow_pair, tmp_path):
    sim, light, native, legacy = shadow_pair
    from daqbridge.catalog import open_catalog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = open_catalog(tmp_path / "data")
    try:
        RE = RunEngine({}, context_managers=[], call_returns_result=True)
        docs: list[tuple[str, dict]] = []
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        RE.subscribe(catalog.writer)
        light.arm(glitch_at=7, watts=3.0e-6)  # the second read of pair 3 sees 3 uW
        result = RE(shadow_compare_plan(legacy, native, 5, 1e-9))
        report: ShadowReport = result.plan_result
        for name, doc in docs:
            schema_validators[DocumentNames(name)].validate(doc)
        events = [d for n, d in docs if n == "event"]
        assert len(events) == 5
        assert set(events[0]["data"]) == {
            "meter_power",
            "meter_legacy_power",
            "meter_minus_meter_legacy",
        }
        # Both are triggered together, so which one reaches the port first is not fixed: the
        # glitch lands in pair 3 on one side or the other.
        diffs = [abs(e["data"]["meter_minus_meter_legacy"]) for e in events]
        assert diffs == [0, 0, 0, pytest.approx(1.5e-6), 0]
        assert [d.index for d in report.disagreements] == [3]
        (start,) = [d for n, d in docs if n == "start"]
        assert start["plan_name"] == "shadow_compare" and start["shadow"]["tolerance"] == 1e-9
        assert report.run_uid == start["uid"]
        catalog.flush()
        again = ShadowReport.from_run(catalog[start["uid"]])
        assert again.native_values == report.native_values
        assert again.legacy_values == report.legacy_values
        assert [d.index for d in again.disagreements] == [3]
        assert ShadowReport.from_documents(docs).as_dict()["n"] == 5
    finally:
        catalog.close()


def test_comparison_arguments_are_checked(shadow_pair):
    sim, light, native, legacy = shadow_pair
    with pytest.raises(ConfigError, match=">= 1"):
        ShadowComparison(native, legacy).run(0)
    with pytest.raises(ConfigError, match="rtol"):
        ShadowComparison(native, legacy, rtol=float("nan"))
    with pytest.raises(ConfigError, match="num"):
        list(shadow_compare_plan(legacy, native, 0))


# --- the command line ----------------------------------------------------------------------------


PROFILE = """
[lab]
name = "shadow test lab"
data_dir = "{data}"

[simulation]
enabled = true
speed = 100.0

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "shadow"
port = "sim://newport1830c?name={sim_name}"
polling_rate_hz = 0
sim = {{ options = {{ noise = {noise}, input_power = 1e-6 }} }}
"""


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    return tmp_path_factory.mktemp("shadow-cli-data")


def _profile(tmp_path, data, noise: float) -> str:
    path = tmp_path / "lab.toml"
    path.write_text(
        PROFILE.format(data=data, sim_name=f"meter-{uuid.uuid4().hex[:8]}", noise=noise)
    )
    return str(path)


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)


def test_cli_agreeing_drivers_exit_0(tmp_path, cli_data, capsys, no_data_env):
    code = main(["shadow", "meter", "--profile", _profile(tmp_path, cli_data, 0.0), "-n", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "AGREE" in out and "pairs compared        6" in out


def test_cli_disagreement_exits_1_and_the_run_is_recorded(tmp_path, cli_data, capsys, no_data_env):
    profile = _profile(tmp_path, cli_data, 0.05)  # 5 % noise: two samples never agree exactly
    code = main(["shadow", "meter", "--profile", profile, "-n", "4", "--rtol", "0", "--record"])
    captured = capsys.readouterr()
    assert code == 1
    assert "DISAGREE" in captured.out and "disagreement(s)" in captured.err
    assert "run  " in captured.out  # the comparison is in the catalog


def test_cli_bad_arguments_exit_2(capsys):
    assert main(["shadow", "meter", "-n", "0"]) == 2
    assert "-n must be >= 1" in capsys.readouterr().err
    assert main(["shadow", "meter", "--rtol", "-1"]) == 2


# --- shadow inside every run (issue 18 item 4) ---------------------------------------------------


class Ramp:
    """An optical input that is new on every reading: 1, 2, 3 ... uW (exact in the 1830-C's
    reply format), remembering what it gave, so a stale legacy value cannot pass for a fresh one."""

    def __init__(self) -> None:
        self.given: list[float] = []

    def __call__(self) -> float:
        self.given.append(float(f"{len(self.given) + 1}e-6"))
        return self.given[-1]


def test_every_event_of_a_count_carries_the_legacy_twin_read_at_that_point(shadow_pair):
    import bluesky.plans as bp

    from daqbridge.bridge._shadow import ShadowRecorder

    sim, light, native, legacy = shadow_pair
    ramp = Ramp()
    sim.optical_input = ramp
    RE = RunEngine({}, context_managers=[])
    RE.preprocessors.append(ShadowRecorder({native: legacy}))
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bp.count([native], 3))
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    events = [d["data"] for n, d in docs if n == "event"]
    assert len(events) == 3
    previous = 0.0
    for data in events:
        assert set(data) == {"meter_power", "meter_legacy_power", "meter_shadow_diff_power"}
        n, lg = data["meter_power"], data["meter_legacy_power"]
        # each reading is one the simulator gave, and newer than anything of the point before
        assert n in ramp.given and lg in ramp.given
        assert min(n, lg) > previous
        previous = max(n, lg)
        assert data["meter_shadow_diff_power"] == pytest.approx(n - lg)
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    assert descriptor["data_keys"]["meter_shadow_diff_power"]["units"] == "W"


def test_the_twin_starts_before_a_native_device_without_trigger_is_read(shadow_pair):
    """The native meter has no trigger (ADR 0012): the recorder starts the twin when the plan
    reads the native device, so the legacy read runs while the native one does, and waits for
    it only before the point's event is saved."""
    import bluesky.plans as bp

    from daqbridge.bridge._shadow import ShadowRecorder

    sim, light, native, legacy = shadow_pair
    RE = RunEngine({}, context_managers=[])
    RE.preprocessors.append(ShadowRecorder({native: legacy}))
    seen: list[tuple[str, str | None]] = []
    RE.msg_hook = lambda msg: seen.append((msg.command, getattr(msg.obj, "name", None)))
    RE(bp.count([native], 2))
    points = [i for i, (command, _) in enumerate(seen) if command == "create"]
    assert len(points) == 2
    for start in points:
        point = seen[start : seen.index(("save", None), start)]
        assert ("trigger", native.name) not in point
        started = point.index(("trigger", legacy.name))
        read = point.index(("read", native.name))
        waited = point.index(("wait", None))
        assert started < read < waited < point.index(("read", legacy.name)), point


def test_one_read_message_of_several_devices_still_carries_the_twin(shadow_pair):
    """bluesky 1.16's trigger_and_read reads a point's devices in one ``Msg("read", *objs)``;
    the recorder takes such a read one object at a time, so the shadowed meter's event still
    carries its twin and difference, and the other device is still read."""
    from bluesky.utils import Msg
    from ophyd.sim import det

    from daqbridge.bridge._shadow import ShadowRecorder

    sim, light, native, legacy = shadow_pair
    RE = RunEngine({}, context_managers=[])
    RE.preprocessors.append(ShadowRecorder({native: legacy}))
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    returned = []

    def plan():
        yield Msg("open_run")
        yield Msg("create", name="primary")
        returned.append((yield Msg("read", det, native)))  # the shadowed one not first
        yield Msg("save")
        yield Msg("close_run")

    RE(plan())
    (event,) = [d["data"] for n, d in docs if n == "event"]
    assert set(event) == {"meter_power", "det", "meter_legacy_power", "meter_shadow_diff_power"}
    assert event["meter_power"] == pytest.approx(1.5e-6, rel=1e-3)  # the simulator's light
    assert event["meter_shadow_diff_power"] == pytest.approx(
        event["meter_power"] - event["meter_legacy_power"]
    )
    assert set(returned[0]) == {"meter_power", "det"}  # the plan gets both readings back


ELLIPTEC_SHADOW = """
[[instruments]]
id = "rot"
driver = "elliptec"
stack = "shadow"
port = "pty"
polling_rate_hz = 0.5
timeout = 5.0  # generous: a loaded CI machine has delayed the first IN reply past 1 s
sim = { options = { enforce_command_spacing = false } }

[instruments.elliptec]
addresses = [{ address = "8", name = "c" }]
"""


def test_a_scan_in_shadow_records_both_drivers_read_backs_after_each_move(
    runtime_data, runtime_profile
):
    import bluesky.plans as bp

    from daqbridge.runtime import Runtime

    path = runtime_profile(stage=None, meter=None, extra=ELLIPTEC_SHADOW)
    with Runtime.from_profile(path) as rt:
        rt.sd.baseline = []  # every event below is a point of the scan
        bus = rt.simulation.simulator("rot")
        reached: list[float] = []
        token = rt.RE.subscribe(lambda name, doc: reached.append(bus.position_deg(8)), "event")
        docs: list[tuple[str, dict]] = []
        rt.RE.subscribe(lambda name, doc: docs.append((name, doc)))
        rt.RE(bp.scan([], rt["rot_c"], 10, 50, 3))
        rt.RE.unsubscribe(token)
    events = [d["data"] for n, d in docs if n == "event"]
    assert len(events) == 3
    for data, target, truth in zip(events, [10, 30, 50], reached, strict=True):
        assert truth == pytest.approx(target, abs=0.1)  # the mount itself
        assert data["rot_c"] == pytest.approx(truth, abs=0.01)
        assert data["rot_c_legacy"] == pytest.approx(truth, abs=0.01)
        assert data["rot_c_shadow_diff"] == pytest.approx(data["rot_c"] - data["rot_c_legacy"])


def test_a_field_missing_on_one_side_is_a_config_error_naming_both_sides(shadow_pair):
    sim, light, native, legacy = shadow_pair
    with pytest.raises(
        ConfigError,
        match=r"'meter_legacy' reads no 'meter_legacy_nope'.*"
        r"meter_legacy_power",
    ):
        ShadowComparison(native, legacy, legacy_field="meter_legacy_nope")
    with pytest.raises(ConfigError, match=r"'meter' reads no 'meter_nope'"):
        list(shadow_compare_plan(legacy, native, 2, native_field="meter_nope"))


def test_a_failed_legacy_read_is_recorded_as_nan_and_the_run_goes_on(shadow_pair):
    import bluesky.plan_stubs as bps

    from daqbridge.bridge._shadow import ShadowRecorder

    sim, light, native, legacy = shadow_pair
    recorder = ShadowRecorder({native: legacy})
    RE = RunEngine({}, context_managers=[])
    RE.preprocessors.append(recorder)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    # The native meter has no trigger, so the recorder starts the twin as the plan reads the
    # native device, and both go to the wire at once. The twin's second trigger first waits
    # for the native read of that point to end (its Q?: the legacy driver sends D? alone),
    # then garbles the next reply: the twin's own D?, whatever the timing.
    from ophyd_async.core import AsyncStatus, set_mock_attr

    real_trigger = legacy.trigger
    triggers = []

    def trigger():
        triggers.append(1)
        if len(triggers) != 2:
            return real_trigger()

        async def after_the_native_read() -> None:
            async with asyncio.timeout(10):
                while sim.received_lines.count("Q?") < 2:
                    await asyncio.sleep(0.001)
            sim.faults.garble_next = 1
            await real_trigger()

        return AsyncStatus(after_the_native_read())

    set_mock_attr(legacy, "trigger", trigger)  # ophyd-async's way to override a verb

    def plan():
        yield from bps.open_run()
        for _ in range(3):
            yield from bps.trigger_and_read([native])
        yield from bps.close_run()

    RE(plan())
    events = [d["data"] for n, d in docs if n == "event"]
    (stop,) = [d for n, d in docs if n == "stop"]
    assert stop["exit_status"] == "success"
    assert [math.isnan(e["meter_legacy_power"]) for e in events] == [False, True, False]
    assert math.isnan(events[1]["meter_shadow_diff_power"])
    (failure,) = recorder.failures
    assert failure.side == "legacy" and "meter_legacy" in failure.message
