"""The runtime on real parts: the embedded simulated lab and small profiles in tmp_path.

Everything is real: simulators on ptys, sim:// URLs and a TCP socket, the serial pool, both
driver stacks, a bluesky RunEngine and a Tiled catalog on SQLite.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.protocols as bps_protocols
import pytest
from bluesky.utils import RunEngineInterrupted

import daqbridge.runtime
from daqbridge.catalog import DATA_ENV
from daqbridge.errors import ConfigError, IdentityMismatch, InstrumentTimeout
from daqbridge.legacy import Command
from daqbridge.runtime import Runtime, StartupFailed
from daqbridge.sim import lookup, serve_pty

from .conftest import copy_catalog

SIM_DEVICES = {
    "sim_stage",
    "sim_stage_x",
    "sim_stage_y",
    "sim_meter",
    "sim_meter_legacy",
    "sim_laser",
    "sim_rotators",
    "sim_rotators_a",
    "sim_rotators_b",
    "sim_rotators_c",
    "sim_dmm",
    "sim_camera",
}


@pytest.fixture(scope="module")
def sim_lab(runtime_catalog_template, tmp_path_factory):
    """The embedded simulated lab (profiles/sim.toml), shared by the tests of this module."""
    data = copy_catalog(runtime_catalog_template, tmp_path_factory.mktemp("sim-lab") / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(data))
        rt = Runtime.from_profile(None, connect_timeout=30)
        try:
            yield rt
        finally:
            report = rt.close()
    assert report.clean, report.format()


# --- the simulated lab --------------------------------------------------------------------------


def test_sim_lab_builds_every_device_of_the_profile(sim_lab):
    assert set(sim_lab.devices) == SIM_DEVICES
    assert set(sim_lab.profile.device_ids()) == SIM_DEVICES
    assert not sim_lab.failures
    assert sim_lab["sim_stage_x"].name == "sim_stage_x"
    assert isinstance(sim_lab["sim_stage_x"], bps_protocols.Movable)
    assert isinstance(sim_lab["sim_meter"], bps_protocols.Readable)
    assert isinstance(sim_lab["sim_meter_legacy"], bps_protocols.Readable)
    with pytest.raises(KeyError, match="sim_stage_x"):
        sim_lab["sim_stage_z"]


def test_sim_lab_runs_both_stacks_on_shared_ports(sim_lab):
    health = sim_lab.legacy.health()
    assert {"sim_laser", "sim_meter_legacy"} <= set(health)
    assert all(h["state"] == "running" for h in health.values()), health
    # The shadow meter: native device and legacy twin share ONE pool port (four ports in all:
    # the laser's pty, the Elliptec pty, the stage and the meter).
    ports = sim_lab.resources.pool.ports
    assert "sim://newport1830c?name=sim_meter" in ports
    assert len(ports) == 4, sorted(ports)
    # The legacy driver really polls through it.
    before = sim_lab.legacy.health()["sim_meter_legacy"]["polls"]
    deadline = time.monotonic() + 5
    while sim_lab.legacy.health()["sim_meter_legacy"]["polls"] <= before:
        assert time.monotonic() < deadline, "the legacy meter stopped polling"
        time.sleep(0.05)


def test_metadata_names_profile_version_and_stacks(sim_lab):
    md = sim_lab.RE.md
    assert md["lab"] == "simulated lab"
    assert md["profile"].endswith("sim.toml")
    assert md["stacks"] == {"native": True, "legacy": True}
    assert md["simulated"] is True
    assert md["instruments"]["sim_meter"] == "shadow"
    import daqbridge

    assert md["daqbridge_version"] == daqbridge.__version__


def test_count_with_native_devices_lands_in_the_catalog(sim_lab):
    uids = sim_lab.RE(bp.count([sim_lab["sim_meter"], sim_lab["sim_dmm"]], num=3))
    sim_lab.catalog.flush()
    run = sim_lab.catalog[uids[0]]
    data = run.primary.read()
    assert data["sim_meter_power"].shape == (3,)
    assert "sim_dmm_voltage" in data
    start = run.metadata["start"]
    assert start["lab"] == "simulated lab"
    assert start["stacks"] == {"native": True, "legacy": True}
    assert run.metadata["stop"]["exit_status"] == "success"


def test_every_run_records_the_profile_hash_and_each_instruments_stack(sim_lab):
    from daqbridge.config import profile_sha256

    (uid,) = sim_lab.RE(bp.count([sim_lab["sim_meter"]], num=1))
    sim_lab.catalog.flush()
    start = sim_lab.catalog[uid].metadata["start"]
    assert start["profile_sha256"] == profile_sha256(sim_lab.profile)
    expected = {i.id: i.stack for i in sim_lab.profile.enabled_instruments()}
    assert start["instrument_stacks"] == expected
    assert start["instrument_stacks"]["sim_meter"] == "shadow"


def test_scan_mixes_native_motor_and_legacy_adapter(sim_lab):
    motor = sim_lab["sim_stage_x"]
    uids = sim_lab.RE(bp.scan([sim_lab["sim_meter"], sim_lab["sim_meter_legacy"]], motor, -1, 1, 3))
    sim_lab.catalog.flush()
    data = sim_lab.catalog[uids[0]].primary.read()
    assert list(data["sim_stage_x"].values) == pytest.approx([-1.0, 0.0, 1.0], abs=1e-3)
    legacy_keys = [k for k in data.data_vars if k.startswith("sim_meter_legacy")]
    assert legacy_keys, list(data.data_vars)
    assert lookup("sim_stage").axis_position(1) == pytest.approx(1.0, abs=1e-3)


def test_coupling_meter_follows_laser_polariser_and_knife_edge(sim_lab):
    """sim.toml couples the meter to the laser (x 0.5), through the analyser on mount c
    (Malus's law) and past a knife edge on sim_stage_x (beam centre 0, radius 2 mm)."""
    laser_sim = sim_lab.simulation.simulator("sim_laser")
    meter, x, analyser = sim_lab["sim_meter"], sim_lab["sim_stage_x"], sim_lab["sim_rotators_c"]

    def measured() -> float:
        uids = sim_lab.RE(bp.count([meter], num=1))
        sim_lab.catalog.flush()
        return float(sim_lab.catalog[uids[0]].primary.read()["sim_meter_power"][0])

    try:
        emitted = laser_sim.output_power_w()
        assert emitted > 1.0  # the simulated lab starts with emission on and the shutter open
        sim_lab.RE(bps.mv(x, -8.0, analyser, 0.0))
        assert measured() == pytest.approx(0.5 * emitted, rel=0.05)
        sim_lab.RE(bps.mv(x, 0.0))  # edge at the beam centre: half the beam passes
        assert measured() == pytest.approx(0.25 * emitted, rel=0.05)
        sim_lab.RE(bps.mv(x, -8.0, analyser, 60.0))  # cos^2(60 deg) = 0.25
        assert measured() == pytest.approx(0.125 * emitted, rel=0.05)
        # The shutter closed: nothing reaches the meter (shutter set through the legacy stack).
        assert sim_lab.legacy.submit("sim_laser", Command.set("shutter", 0), timeout=10).ok
        assert measured() == pytest.approx(0.0, abs=1e-6)
    finally:
        sim_lab.legacy.submit("sim_laser", Command.set("shutter", 1), timeout=10)
        sim_lab.RE(bps.mv(x, 0.0, analyser, 0.0))


def test_status_shows_who_holds_a_port_and_who_waits(sim_lab):
    port = sim_lab.resources.pool.ports["sim://esp300?name=sim_stage"]
    held = threading.Event()
    release = threading.Event()
    waiter_done = threading.Event()

    def holder():
        with port.lease(owner="alignment-script", timeout=5.0):
            held.set()
            release.wait(10)

    def waiter():
        with port.lease(owner="waiting-script", timeout=10.0):
            pass
        waiter_done.set()

    threads = [threading.Thread(target=holder, daemon=True)]
    threads[0].start()
    try:
        assert held.wait(5)
        threads.append(threading.Thread(target=waiter, daemon=True))
        threads[1].start()
        deadline = time.monotonic() + 5
        while True:
            entry = next(p for p in sim_lab.status()["ports"].values() if p["port"] == port.url)
            if entry["waiters"]:
                break
            assert time.monotonic() < deadline, entry
            time.sleep(0.01)
        assert entry["holder"] == "alignment-script"
        assert entry["held_since"] is not None and entry["held_since"] <= time.time()
        assert entry["waiters"] == ["waiting-script"]
        text = sim_lab.format_status()
        assert "held by 'alignment-script'" in text
        assert "waiting-script" in text
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert waiter_done.is_set()
    entry = next(p for p in sim_lab.status()["ports"].values() if p["port"] == port.url)
    assert entry["holder"] is None


def test_status_covers_every_section(sim_lab):
    status = sim_lab.status()
    assert status["state"] == "running"
    assert status["run_engine"]["state"] == "idle"
    assert status["failures"] == {}
    assert status["legacy"]["running"] is True
    assert status["legacy"]["dropped"] == 0
    assert status["legacy"]["published"] > 0
    assert status["catalog"]["open"] is True
    sims = status["simulators"]["instruments"]
    assert sims["sim_laser"]["transport"] == "pty"
    assert sims["sim_dmm"]["transport"] == "tcp"
    assert sims["sim_stage"]["transport"] == "sim-url"
    assert status["simulators"]["couplings"] == [
        "sim_meter reads sim_laser x 0.5 x cos^2(sim_rotators_c) x knife edge on sim_stage_x"
    ]
    assert status["devices"]["sim_stage_x"]["connected"] is True
    assert status["devices"]["sim_laser"]["stack"] == "legacy"
    text = sim_lab.format_status()
    for needle in ("RunEngine: idle", "legacy stack: running", "catalog:", "sim_dmm"):
        assert needle in text


# --- small profiles -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stacks", "native_ids", "legacy_ids"),
    [
        ("[stacks]\nlegacy = false", {"stage", "stage_x", "meter"}, set()),
        ("[stacks]\nnative = false", set(), {"meter_legacy", "laser"}),
    ],
)
def test_a_stack_switched_off_builds_only_the_other(
    runtime_data, runtime_profile, stacks, native_ids, legacy_ids
):
    path = runtime_profile(stacks=stacks, laser="legacy")
    with Runtime.from_profile(path) as rt:
        assert set(rt.devices) == native_ids | legacy_ids
        assert set(rt._native) == ({"stage", "meter"} if native_ids else set())
        if legacy_ids:
            assert set(rt.legacy.instruments) == legacy_ids
        else:
            assert rt.legacy is None
        ids = sorted(rt.devices)
        uids = rt.RE(bp.count([rt[i] for i in ids if i != "stage"], num=2))
        rt.catalog.flush()
        assert rt.catalog[uids[0]].metadata["stop"]["num_events"]["primary"] == 2
    assert rt.shutdown_report.clean, rt.shutdown_report.format()


def test_bad_profile_is_refused_before_any_port_opens(runtime_data, runtime_profile, tmp_path):
    with serve_pty("esp300") as server:
        text = f"""
[lab]
name = "typo lab"

[[instruments]]
id = "stage"
driver = "esp300"
port = "{server.path}"
[instruments.esp300]
axes = [{{ number = 1, name = "x", low_limit = -1.0, high_limit = 1.0 }}]

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "/dev/ttyS_not_here"
baudrate = 9600
"""
        path = runtime_profile("typo", text=text)
        with pytest.raises(ConfigError) as info:
            Runtime.from_profile(path)
        message = str(info.value)
        assert "baudrate" in message and "baud_rate" in message
        assert str(path) in message
        assert server.simulator.received_lines == []
    assert not (runtime_data / "wal").exists()


def test_stack_without_a_legacy_driver_is_refused_before_any_port_opens(
    runtime_data, runtime_profile
):
    path = runtime_profile(stage="legacy", meter="native")
    tag = path.read_text().split("name=")[1].split("_stage")[0]
    with pytest.raises(ConfigError, match="no legacy driver for 'esp300'") as info:
        Runtime.from_profile(path)
    assert info.value.instrument == "stage"
    assert lookup(f"{tag}_meter", None) is None  # no simulator was even created
    assert not (runtime_data / "wal").exists()


def test_failed_identity_aborts_start_up_and_names_instrument_and_port(
    runtime_data, runtime_profile
):
    # An ESP300 entry whose cable goes to a power meter: the identity check must catch it.
    with serve_pty("newport1830c") as wrong:
        extra = f"""
[[instruments]]
id = "stage2"
driver = "esp300"
port = "{wrong.path}"
timeout = 0.3
[instruments.esp300]
axes = [{{ number = 1, name = "x", low_limit = -1.0, high_limit = 1.0 }}]
"""
        path = runtime_profile(meter="shadow", extra=extra)
        rt = Runtime.from_profile(path, start=False, connect_timeout=20)
        with pytest.raises(StartupFailed) as info:
            rt.start()
        err = info.value
        assert err.instrument == "stage2"
        assert err.resource == wrong.path
        assert wrong.path in str(err) and "stage2" in str(err) and "Fix:" in str(err)
        assert isinstance(err.cause, IdentityMismatch | InstrumentTimeout), repr(err.cause)
        # Everything started before the failure was shut down again, in order.
        assert rt.state == "failed"
        assert rt.shutdown_report is not None
        assert [p.phase for p in rt.shutdown_report.phases][-1] == "simulators"
        assert rt.resources.pool.ports == {}
        assert rt.legacy is not None and not rt.legacy.running

        rt2 = Runtime.from_profile(path, allow_partial=True, connect_timeout=20)
        try:
            assert "stage2" in rt2.failures
            assert "stage2" not in rt2.devices and "stage2_x" not in rt2.devices
            assert {"stage", "stage_x", "meter", "meter_legacy"} <= set(rt2.devices)
            status = rt2.status()
            assert "stage2" in status["failures"]
            assert "FAILED stage2" in rt2.format_status()
        finally:
            rt2.close()


def test_the_legacy_restart_policy_comes_from_the_profile(runtime_data, runtime_profile):
    path = runtime_profile(stage=None, meter="legacy")
    text = path.read_text() + "\n[legacy]\nmax_restarts = 7\nrestart_initial_s = 0.25\n"
    path.write_text(text)
    with Runtime.from_profile(path) as rt:
        assert rt.legacy.restart_policy.max_restarts == 7
        assert rt.legacy.restart_policy.initial_delay == 0.25


def test_data_dir_comes_from_the_environment(runtime_data, runtime_profile, tmp_path):
    path = runtime_profile(stage=None, meter="native")
    with Runtime.from_profile(path, data_dir=tmp_path / "ignored", best_effort=True) as rt:
        assert rt.data_dir == runtime_data
        assert rt.catalog.data_dir == runtime_data
        assert rt.status()["run_engine"]["subscribers"] == ["best_effort", "catalog"]
    assert not (tmp_path / "ignored").exists()


ELLIPTEC_LEGACY = """
[[instruments]]
id = "rotators"
driver = "elliptec"
stack = "legacy"
port = "pty"
polling_rate_hz = 2.0
timeout = 5.0  # generous: a loaded CI machine has delayed the first IN reply past 1 s
sim = { options = { enforce_command_spacing = false } }

[instruments.elliptec]
addresses = [{ address = "2", name = "a" }, { address = "3", name = "b" }]
"""


def test_legacy_elliptec_mounts_become_movable_adapters(runtime_data, runtime_profile):
    path = runtime_profile(stage=None, meter=None, extra=ELLIPTEC_LEGACY)
    with Runtime.from_profile(path) as rt:
        assert {"rotators", "rotators_a", "rotators_b"} == set(rt.devices)
        mount = rt["rotators_b"]
        assert isinstance(mount, bps_protocols.Movable)
        uids = rt.RE(bp.scan([rt["rotators_a"]], mount, 10, 20, 2))
        rt.catalog.flush()
        data = rt.catalog[uids[0]].primary.read()
        assert data[[k for k in data.data_vars if k.startswith("rotators_b")][0]].values[
            -1
        ] == pytest.approx(20.0, abs=0.1)
        bus = rt.simulation.simulator("rotators")
        assert bus.position_deg(3) == pytest.approx(20.0, abs=0.1)


def test_unknown_sigint_mode_is_a_config_error(runtime_profile):
    path = runtime_profile(stage=None, meter="native")
    with pytest.raises(ConfigError, match="sigint"):
        Runtime.from_profile(path, sigint="ignore", start=False)


def test_a_lower_layer_imports_nothing_above_it(runtime_child_env):
    # The transport is imported by every driver and by `daqbridge hardware`: it must not drag in
    # the runtime, Tiled, bluesky, the drivers or the simulators (the import-linter contract says
    # it may not import them; this says nothing imports them behind its back at run time). The
    # runtime itself loads the stack, but never the simulators: only _simulation does, lazily.
    code = (
        "import sys, daqbridge.transport\n"
        "heavy = [m for m in ('tiled', 'bluesky', 'ophyd', 'ophyd_async', 'daqbridge.sim',"
        " 'daqbridge.devices', 'daqbridge.legacy', 'daqbridge.config', 'daqbridge.catalog',"
        " 'daqbridge.runtime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from daqbridge.runtime import Runtime, ShutdownReport, format_status\n"
        "assert 'daqbridge.sim' not in sys.modules, 'only _simulation may import daqbridge.sim'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=runtime_child_env,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_only_the_simulation_module_imports_the_simulators():
    runtime_dir = Path(daqbridge.runtime.__file__).parent
    offenders = [
        p.name
        for p in runtime_dir.glob("*.py")
        if p.name != "_simulation.py" and "daqbridge.sim" in p.read_text()
    ]
    assert offenders == []


# --- aborts are one line, not bluesky's traceback (issue 17, item 13; issue 15) -----------------


def test_an_abort_is_one_line_naming_the_run_not_a_traceback(runtime_data, runtime_profile, caplog):
    # bluesky's own level may have been raised by an in-process CLI test: hear everything. Our
    # own handler on the root logger, because the in-process CLI filters the root's handlers.
    caplog.set_level(logging.DEBUG, logger="bluesky")
    caplog.set_level(logging.INFO, logger="daqbridge.runtime.runs")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    path = runtime_profile(meter="native", speed=1.0, velocity=1.0)
    try:
        with Runtime.from_profile(path, sigint="abort") as rt:
            aborting: list[threading.Thread] = []

            def abort_after_two_points(name, doc):
                if name == "event" and doc["seq_num"] == 2:
                    # From another thread, as a GUI or the signal handler does.
                    aborting.append(threading.Thread(target=rt.RE.abort, args=("operator",)))
                    aborting[0].start()

            rt.RE.subscribe(abort_after_two_points)
            uids: list[str] = []
            rt.RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
            with pytest.raises(RunEngineInterrupted):
                rt.RE(bp.scan([rt["meter"]], rt["stage_x"], 0, 20, 21))
            aborting[0].join(30)
            (uid,) = uids
    finally:
        logging.getLogger().removeHandler(handler)
    tracebacks = [r for r in records if r.name.startswith("bluesky") and r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    lines = [r.getMessage() for r in records if r.name == "daqbridge.runtime.runs"]
    assert lines == [f"run {uid} aborted (exit status 'abort'); the events taken so far are kept"]
