"""The baseline stream: every run reads its instruments at its start and end (issue 15).

Real parts throughout: simulators on sim:// URLs, a pty and a TCP socket, both driver stacks, a
bluesky RunEngine and a Tiled catalog on SQLite, read back the way a user reads a run.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import pytest
from bluesky.utils import FailedStatus

from daqbridge.catalog import DATA_ENV, open_catalog
from daqbridge.config import check_profile
from daqbridge.devices.core import call_sync
from daqbridge.errors import ConfigError
from daqbridge.runtime import Runtime
from daqbridge.runtime._baseline import resolve
from daqbridge.sim import serve_pty

from .conftest import copy_catalog, lab_profile, unique

DMM = """
[[instruments]]
id = "dmm"
driver = "scpi"
resource = "sim-tcp"

[instruments.scpi]
expected_idn = "DAQBRIDGE-SIM"

[[instruments.scpi.signals]]
name = "voltage"
query = "MEAS:VOLT:DC?"
kind = "hinted"

[[instruments.scpi.signals]]
name = "source"
query = "SOUR:VOLT?"
command = "SOUR:VOLT {value}"
low = -10.0
high = 10.0
kind = "config"
"""


def _patient(text: str, meter_timeout: float = 5.0) -> str:
    """The profile with the meter's reply timeout set: generous (a loaded machine delays
    replies past the 1 s default), or short where the test is about a meter that is lost."""
    return text.replace(
        'driver = "newport1830c"', f'driver = "newport1830c"\ntimeout = {meter_timeout}'
    )


def _with_baseline(text: str, baseline: str) -> str:
    """The profile with ``baseline = ...`` in its [lab] table."""
    return text.replace("[lab]\n", f"[lab]\nbaseline = {baseline}\n", 1)


def _streams(data, uid: str) -> dict:
    catalog = open_catalog(data, readonly=True)
    try:
        run = catalog.client[uid]
        return {name: run[name].read() for name in run}
    finally:
        catalog.close()


def test_every_run_reads_each_instrument_at_its_start_and_end(runtime_data, runtime_profile):
    text = lab_profile(unique("baseline"), meter="shadow", laser="legacy", extra=DMM)
    path = runtime_profile("baseline", text=_patient(text))
    with Runtime.from_profile(path, connect_timeout=30) as rt:
        dmm_sim = rt.simulation.simulator("dmm")
        source_at_start = float(dmm_sim.execute("SOUR:VOLT?"))

        @bpp.run_decorator()
        def turn_the_source_knob():
            yield from bps.trigger_and_read([rt["stage_x"]])
            dmm_sim.execute("SOUR:VOLT 2.5")  # on the front panel, not through the driver
            yield from bps.null()

        uid = rt.RE(turn_the_source_knob())[0]
        dmm = rt["dmm"]
        fresh = call_sync(dmm.read_signals(["source"]), device=dmm, timeout=10)["source"]
    streams = _streams(runtime_data, uid)

    baseline = streams["baseline"]
    assert baseline.sizes["time"] == 2
    assert list(baseline["dmm_source"].values) == [source_at_start, fresh] == [source_at_start, 2.5]
    # Both stacks: the legacy laser, the native meter; the shadow twin only through its native.
    assert {"laser_wavelength", "meter_power", "meter_wavelength", "stage_x"} <= set(baseline)
    assert not [key for key in baseline if key.startswith("meter_legacy")]


@pytest.fixture(scope="module")
def chosen_lab(runtime_catalog_template, tmp_path_factory):
    """A small lab whose profile names its baseline devices, shared by the tests below."""
    root = tmp_path_factory.mktemp("chosen-baseline")
    data = copy_catalog(runtime_catalog_template, root / "data")
    text = _with_baseline(
        _patient(lab_profile(unique("chosen"), meter="native", extra=DMM)),
        '["meter", "dmm.source"]',
    )
    (root / "lab.toml").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(data))
        with Runtime.from_profile(root / "lab.toml", connect_timeout=30) as rt:
            yield rt, data


def test_the_profile_names_the_baseline_devices(chosen_lab):
    rt, data = chosen_lab
    uid = rt.RE(bp.count([rt["stage_x"]], 1))[0]
    rt.catalog.flush()
    baseline = _streams(data, uid)["baseline"]
    assert sorted(baseline) == [
        "dmm_source",
        "meter_attenuator",
        "meter_filter",
        "meter_power",
        "meter_range",
        "meter_wavelength",
    ]


def test_the_closing_reading_has_the_meters_setting_of_that_moment(chosen_lab):
    rt, data = chosen_lab
    meter_sim = rt.simulation.simulator("meter")
    at_start = meter_sim.wavelength
    turned = 1064 if at_start != 1064 else 633

    @bpp.run_decorator()
    def turn_the_wavelength_knob():
        yield from bps.trigger_and_read([rt["stage_x"]])
        with meter_sim.lock:  # on the front panel, not through the driver
            meter_sim.wavelength = turned
        yield from bps.null()

    try:
        uid = rt.RE(turn_the_wavelength_knob())[0]
    finally:
        with meter_sim.lock:
            meter_sim.wavelength = at_start
    rt.catalog.flush()
    baseline = _streams(data, uid)["baseline"]
    assert list(baseline["meter_wavelength"].values) == [at_start, turned]


def test_a_run_that_fails_keeps_only_its_opening_reading(chosen_lab):
    rt, data = chosen_lab
    uids = []
    rt.RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")

    @bpp.run_decorator()
    def a_plan_with_a_bug():
        yield from bps.trigger_and_read([rt["stage_x"]])
        raise ZeroDivisionError("a bug in the plan")

    with pytest.raises(ZeroDivisionError):
        rt.RE(a_plan_with_a_bug())
    rt.catalog.flush()
    assert _streams(data, uids[-1])["baseline"].sizes["time"] == 1


def test_an_empty_baseline_records_no_baseline_stream(runtime_data, runtime_profile):
    text = _with_baseline(_patient(lab_profile(unique("nobase"), meter="native")), "[]")
    with Runtime.from_profile(runtime_profile("nobase", text=text), connect_timeout=30) as rt:
        uid = rt.RE(bp.count([rt["meter"]], 1))[0]
    assert sorted(_streams(runtime_data, uid)) == ["primary"]


def test_an_unknown_baseline_device_is_refused_before_any_port_opens(runtime_data, runtime_profile):
    with serve_pty("newport1830c") as server:
        text = f"""
[lab]
name = "typo lab"
baseline = ["meterr"]

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "{server.path}"
"""
        with pytest.raises(ConfigError) as info:
            Runtime.from_profile(runtime_profile("typo", text=text))
        assert server.simulator.received_lines == []
    message = str(info.value)
    assert "lab.baseline" in message and "'meterr'" in message
    assert "did you mean 'meter'" in message


def test_a_lost_instrument_fails_the_run_with_its_own_error(runtime_data, runtime_profile):
    text = _with_baseline(_patient(lab_profile(unique("lost"), meter="native"), 0.3), '["meter"]')
    with Runtime.from_profile(runtime_profile("lost", text=text), connect_timeout=30) as rt:
        meter_sim = rt.simulation.simulator("meter")
        stops = []
        rt.RE.subscribe(lambda name, doc: stops.append(doc), "stop")

        @bpp.run_decorator()
        def meter_lost_during_the_run():
            yield from bps.trigger_and_read([rt["stage_x"]])
            meter_sim.faults.stuck = True  # the meter stops answering before the end's read
            yield from bps.null()

        with pytest.raises(FailedStatus) as at_end:
            rt.RE(meter_lost_during_the_run())
        with pytest.raises(FailedStatus) as at_start:
            rt.RE(bp.count([rt["stage_x"]], 1))
    for failure in (at_end, at_start):
        assert "'meter'" in str(failure.value) and "no reply" in str(failure.value)
    assert [stop["exit_status"] for stop in stops] == ["fail", "fail"]
    assert all("'meter'" in stop["reason"] and "no reply" in stop["reason"] for stop in stops)


def test_config_check_lists_an_unknown_baseline_device_with_the_nearest_id(runtime_profile):
    text = _with_baseline(lab_profile(unique("check"), meter="native"), '["stage_x", "meterr"]')
    profile, issues = check_profile(runtime_profile("check", text=text))
    assert profile is None
    (issue,) = issues
    assert issue.key == "lab.baseline" and issue.line == 3
    assert "'meterr'" in issue.what and "'stage_x'" not in issue.what
    assert "did you mean 'meter'" in issue.fix


def test_a_component_that_does_not_exist_names_the_ones_that_do(chosen_lab):
    rt, _ = chosen_lab
    with pytest.raises(ConfigError) as info:
        resolve("dmm.sorce", rt.devices, profile="lab.toml")
    assert "'dmm' has no component 'sorce'" in str(info.value)
    assert "source" in str(info.value) and "lab.baseline" in str(info.value)
