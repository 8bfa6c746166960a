"""MaiTai on ophyd-async: connect pinned to tests/transcripts/maitai.yaml, checked against the
simulator on a real pty (its own state is the truth), in a real RunEngine, and described exactly
as the v1 laser on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd.sim import det

from daqbridge.devices.core import ReplayPort, wire_backend
from daqbridge.devices.maitai import MaiTaiDiagnostics
from daqbridge.devices.maitai import MaiTaiLaser as MaiTaiLaserAsync
from daqbridge.errors import IdentityMismatch, InstrumentFault, ValueRejected
from daqbridge.sim import serve_pty

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "maitai.yaml"
FAST = {"write_delay": 0.0, "timeout": 0.5, "poll_interval": 0.01}
IDN = b"Spectra Physics,MaiTai,3227/51054/40856,0245-2.00.34 / CD00000019 / 214-00.004.057\n"


def transcript(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of the transcript shared with the simulator tests."""
    exchanges = yaml.safe_load(TRANSCRIPTS.read_text())[section]["exchanges"]
    return [(s.encode(), None if r is None else r.encode()) for s, r in exchanges]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """One body on a fresh loop, bounded: a hang fails instead of stalling the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10.0)

    return asyncio.run(bounded())


def on_loop(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    return call_in_bluesky_event_loop(coro, timeout=timeout)


async def put(signal, value) -> None:
    await signal.set(value)


async def start(movable, target: float):
    """``movable.set(target)`` made on the loop (set() makes its task where it is called)."""
    return movable.set(target)


async def finish(status) -> None:
    await status


@pytest.fixture
def laser(serial_pool, RE):  # noqa: N803 - the RunEngine's loop must be running
    """``laser(sim_options, **laser_options)`` -> (server, laser "maitai"), connected on the
    RunEngine's loop, on a pty opened as the lab opens it (9600 baud, XON/XOFF)."""
    opened = []

    def make(sim_options: dict | None = None, **options: Any):
        cm = serve_pty("maitai", **{"warmed_up": True, "speed": 50, **(sim_options or {})})
        server = cm.__enter__()
        opened.append(cm)
        port = serial_pool.open(server.path, baudrate=9600, xonxoff=True)
        device = MaiTaiLaserAsync(port, name="maitai", **{**FAST, **options})
        on_loop(device.connect())
        return server, device

    yield make
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


# --- pinned to tests/transcripts/maitai.yaml ----------------------------------------------------


def test_connect_is_the_transcripts_connect_section_in_order_in_one_lease():
    port = ReplayPort(transcript("connect"), url="replay://maitai")

    async def body():
        laser = MaiTaiLaserAsync(port, name="maitai")
        await laser.connect()
        return laser, await laser.wavelength.setpoint.get_value()  # no wire: the target sent

    laser, target = run(body())
    port.assert_done()  # every pair used, in order, nothing else sent
    assert len(port.transactions) == 1
    assert laser.laser_wavelength_limits == (690.0, 1040.0)
    assert target == 820.0  # WAVELENGTH?: where the laser is going
    assert wire_backend(laser.wavelength.readback).last_reading["value"] == 820.0  # READ:WAV?


def test_a_tune_is_the_command_alone_then_its_confirmation_then_read_back_polls():
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    writes: list[bytes] = []
    take = port._take
    port._take = lambda data: (writes.append(data), take(data))  # type: ignore[method-assign]
    port.extend(
        [
            (b"READ:WAV?\n", b"820nm\n"),  # StandardMovable: the starting wavelength
            (b"WAVELENGTH 830\n", None),  # silent, and written alone (the laser's 50 ms)
            (b"WAVELENGTH?\n", b"830nm\n"),  # the laser took the target
            (b"READ:WAV?\n", b"825nm\n"),
            (b"READ:WAV?\n", b"830nm\n"),
            (b"READ:WAV?\n", b"830nm\n"),  # settle_reads = 2: the same twice
        ]
    )

    async def body():
        laser = MaiTaiLaserAsync(port, name="maitai", poll_interval=0.001)
        await laser.connect()
        await laser.wavelength.set(830)

    run(body())
    port.assert_done()
    assert b"WAVELENGTH 830\n" in writes  # a write of its own: the laser's quiet period follows
    assert port.transactions[-5:] == [
        b"READ:WAV?\n",
        b"WAVELENGTH 830\nWAVELENGTH?\n",
        b"READ:WAV?\n",
        b"READ:WAV?\n",
        b"READ:WAV?\n",
    ]


def test_diagnostics_are_v1s_queries_in_one_lease():
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    asked = [(s, r) for s, r in transcript("diagnostics_on") if s != b"SYSTEM:ERR?\n"]
    port.extend(asked)  # v1 does not send the transcript's closing SYSTEM:ERR? either

    async def body():
        laser = MaiTaiLaserAsync(port, name="maitai")
        await laser.connect()
        return await laser.diagnostics()

    diagnostics = run(body())
    port.assert_done()
    assert port.transactions[-1] == b"".join(sent for sent, _ in asked)
    assert diagnostics == MaiTaiDiagnostics(
        mode="POW",
        pump_setpoint_w=13.43,
        pump_power_w=13.43,
        pump_current_pct=75.0,
        diode_current_a=(21.0, 22.0),
        diode_temperature_c=(26.0, 27.0),
        shg_status=0,
        rf_phase_pct=50.0,
        modelocker_enabled=True,
        pump_error_code=0,
        history=(1,) + (0,) * 15,
        watchdog_s=0.0,
    )


def test_refresh_configuration_is_v1s_queries_in_one_lease():
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    port.extend(transcript("refresh"))

    async def body():
        laser = MaiTaiLaserAsync(port, name="maitai")
        await laser.connect()
        await laser.refresh_configuration()
        return laser

    laser = run(body())
    port.assert_done()
    assert port.transactions[-1] == b"".join(sent for sent, _ in transcript("refresh"))
    latest = {
        s.name: wire_backend(s).last_reading["value"]
        for s in (laser.emission, laser.status_byte, laser.shutter)
    }
    assert latest == {"maitai_emission": 1, "maitai_status_byte": 15, "maitai_shutter": 1}


def test_a_port_without_a_maitai_is_refused_naming_what_answered():
    port = ReplayPort([(b"*IDN?\n", b"Spectra Physics,Tsunami,1234,1.0\n")], url="replay://x")

    async def body():
        await MaiTaiLaserAsync(port, name="maitai").connect()

    with pytest.raises(IdentityMismatch, match="Tsunami"):
        run(body())
    port.assert_done()


# --- against the simulator on a pty -------------------------------------------------------------


@pytest.mark.parametrize("term", ["CR", "CRLF"])
def test_the_profiles_reply_terminator_frames_replies(laser, term):
    server, maitai = laser({"reply_terminator": term}, reply_terminator=term)
    reading = on_loop(maitai.read())
    assert reading["maitai_wavelength"]["value"] == server.simulator.wavelength_nm()
    assert server.simulator.protocol_errors == []


def test_a_move_ends_where_the_simulator_says(laser):
    server, maitai = laser()
    sim = server.simulator
    on_loop(put(maitai.wavelength, 812.0))
    assert not sim.is_tuning()
    assert sim.target_wavelength_nm() == 812.0
    reported = on_loop(maitai.wavelength.read())["maitai_wavelength"]["value"]
    assert reported == sim.wavelength_nm()
    assert sim.protocol_errors == []


def test_the_shutter_set_is_read_back_from_the_simulator(laser):
    server, maitai = laser()
    sim = server.simulator
    on_loop(put(maitai.shutter, "open"))
    assert sim.shutter_open is True
    assert on_loop(maitai.shutter.get_value()) == 1
    on_loop(put(maitai.shutter, 0))
    assert sim.shutter_open is False


def test_a_shutter_the_laser_ignores_fails_naming_local_mode(laser):
    server, maitai = laser({"local_mode": True}, shutter_timeout=0.1)
    with pytest.raises(InstrumentFault, match="MaiTai ignored SHUTTER 1") as err:
        on_loop(put(maitai.shutter, 1))
    assert server.path in str(err.value)
    assert server.simulator.shutter_open is False


def test_a_reading_is_the_simulators_truth(laser):
    server, maitai = laser()
    sim = server.simulator
    on_loop(put(maitai.shutter, 1))
    on_loop(put(maitai.emission, "on"))
    reading = on_loop(maitai.read())
    assert sim.output_power_w() > 1.0  # light is out: the reading is not the closed-shutter 0
    assert reading["maitai_power"]["value"] == pytest.approx(sim.output_power_w(), abs=5e-4)
    assert reading["maitai_wavelength"]["value"] == sim.wavelength_nm()
    config = on_loop(maitai.read_configuration())
    assert config["maitai_emission"]["value"] == 1 and sim.emission is True


def test_on_is_refused_before_any_byte_while_warming_up(laser):
    server, maitai = laser({"warmed_up": False, "warmup_s": 600, "speed": 1})
    with pytest.raises(InstrumentFault, match="warming up"):
        on_loop(put(maitai.emission, 1))
    assert "ON" not in server.simulator.received_lines


def test_an_out_of_range_wavelength_is_refused_before_any_byte(laser, RE):  # noqa: N803
    server, maitai = laser(wavelength_limits=(700, 1000))
    sim = server.simulator
    before = list(sim.received_lines)
    with pytest.raises(ValueRejected, match="profile allows 700-1000 nm") as err:
        maitai.wavelength.set(1010)  # synchronous: no status, no task, no query
    assert err.value.limit == (700.0, 1000.0) and server.path in str(err.value)
    with pytest.raises(ValueRejected):
        RE(bps.mv(maitai.wavelength, float("nan")))
    assert sim.received_lines == before


def test_a_target_the_laser_refuses_fails_at_once_with_its_error(laser):
    server, maitai = laser()
    server.simulator.wavelength_max_nm = 950  # said 690-1040 at connect; now refuses 1000
    with pytest.raises(InstrumentFault, match="130, EXE_ERR") as err:
        on_loop(put(maitai.wavelength, 1000), timeout=5)  # tune_timeout is 60 s
    assert err.value.code == 130


def test_stop_during_a_tune_halts_it_where_it_is(laser, wait_until):
    server, maitai = laser({"speed": 1, "tuning_rate_nm_s": 5})  # 200 nm: a 40 s tune
    sim = server.simulator
    status = on_loop(start(maitai.wavelength, 1000))
    assert wait_until(lambda: sim.wavelength_nm() > 800.5)
    on_loop(maitai.wavelength.stop())
    with pytest.raises(RuntimeError, match="was stopped"):
        on_loop(finish(status))
    assert wait_until(lambda: not sim.is_tuning())
    assert 800 < sim.target_wavelength_nm() < 1000


def test_a_wavelength_scan_in_a_real_run_engine(laser, RE, docs):  # noqa: N803
    server, maitai = laser()
    RE(bp.scan([det], maitai.wavelength, 750, 850, 3))
    docs.validate()
    events = docs.events()
    assert [e["data"]["maitai_wavelength"] for e in events] == [750.0, 800.0, 850.0]
    assert [e["data"]["maitai_wavelength_setpoint"] for e in events] == [750.0, 800.0, 850.0]
    descriptor = docs.of("descriptor")[0]
    assert descriptor["data_keys"]["maitai_wavelength"]["units"] == "nm"
    assert server.simulator.wavelength_nm() == 850.0
    assert server.simulator.protocol_errors == []
