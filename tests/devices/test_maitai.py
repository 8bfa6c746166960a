"""MaiTaiLaser (ophyd-async): connect and every exchange pinned to tests/transcripts/maitai.yaml,
checked against the simulator on a real pty (its own state is the truth), in a real RunEngine.

Speed factors keep tuning and warm-up short; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import pytest
import yaml
from bluesky.protocols import (
    Configurable,
    Locatable,
    Movable,
    Readable,
    Stageable,
    Stoppable,
    Triggerable,
)
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import FailedStatus, RunEngineInterrupted

from daqbridge.devices.core import ReplayPort, call_sync, wire_backend
from daqbridge.devices.maitai import REPLY_TERMINATORS, MaiTaiDiagnostics, MaiTaiLaser, _quantity
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.sim import lookup, serve_pty

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "maitai.yaml"
FAST = {"write_delay": 0.0, "timeout": 0.5, "poll_interval": 0.01}
SLOW_TUNE = {"speed": 1, "tuning_rate_nm_s": 5}
"""5 nm/s: a 200 nm tune takes 40 s, far longer than a loaded machine can stall a test between
seeing the tune under way and interrupting it."""


def transcript(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of the transcript shared with the simulator tests."""
    exchanges = yaml.safe_load(TRANSCRIPTS.read_text())[section]["exchanges"]
    return [(s.encode(), None if r is None else r.encode()) for s, r in exchanges]


def queries(section: str) -> list[str]:
    """The lines of a section as the simulator records them (terminator removed)."""
    return [sent.decode().strip() for sent, _ in transcript(section)]


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


def latest(signal) -> Any:
    """The value the laser last reported through ``signal`` (no wire exchange)."""
    return wire_backend(signal).last_reading["value"]


async def replayed(port: ReplayPort, **options: Any) -> MaiTaiLaser:
    laser = MaiTaiLaser(port, name="maitai", **options)
    await laser.connect()
    return laser


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
        device = MaiTaiLaser(port, name="maitai", **{**FAST, **options})
        on_loop(device.connect())
        return server, device

    yield make
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


# --- pinned to tests/transcripts/maitai.yaml ----------------------------------------------------


def test_connect_is_the_transcripts_connect_section_in_order_in_one_lease():
    port = ReplayPort(transcript("connect"), url="replay://maitai")

    async def body():
        laser = await replayed(port)
        return laser, await laser.wavelength.setpoint.get_value()  # no wire: the target sent

    laser, target = run(body())
    port.assert_done()  # every pair used, in order, nothing else sent
    assert len(port.transactions) == 1
    assert laser.laser_wavelength_limits == (690.0, 1040.0)
    assert target == 820.0  # WAVELENGTH?: where the laser is going
    assert latest(laser.wavelength.readback) == 820.0  # READ:WAV?


def test_a_tune_is_the_command_alone_then_its_confirmation_then_read_back_polls():
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    writes: list[bytes] = []
    take = port._take
    port._take = lambda data: (writes.append(data), take(data))  # type: ignore[method-assign]
    port.extend(
        [
            # no READ:WAV? first: the tune starts from the wavelength reported at connect
            (b"WAVELENGTH 830\n", None),  # silent, and written alone (the laser's 50 ms)
            (b"WAVELENGTH?\n", b"830nm\n"),  # the laser took the target
            (b"READ:WAV?\n", b"825nm\n"),
            (b"READ:WAV?\n", b"830nm\n"),
            (b"READ:WAV?\n", b"830nm\n"),  # settle_reads = 2: the same twice
        ]
    )

    async def body():
        laser = await replayed(port, poll_interval=0.001)
        await laser.wavelength.set(830)

    run(body())
    port.assert_done()
    assert b"WAVELENGTH 830\n" in writes  # a write of its own: the laser's quiet period follows
    assert port.transactions[-4:] == [
        b"WAVELENGTH 830\nWAVELENGTH?\n",
        b"READ:WAV?\n",
        b"READ:WAV?\n",
        b"READ:WAV?\n",
    ]


@pytest.mark.parametrize(("section", "on"), [("diagnostics_off", False), ("diagnostics_on", True)])
def test_diagnostics_are_v1s_queries_in_one_lease(section, on):
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    asked = [(s, r) for s, r in transcript(section) if s != b"SYSTEM:ERR?\n"]
    port.extend(asked)  # v1 does not send the transcript's closing SYSTEM:ERR? either

    async def body():
        laser = await replayed(port)
        return await laser.diagnostics()

    diagnostics = run(body())
    port.assert_done()
    assert port.transactions[-1] == b"".join(sent for sent, _ in asked)
    assert diagnostics == MaiTaiDiagnostics(
        mode="POW",
        pump_setpoint_w=13.43,
        pump_power_w=13.43 if on else 0.0,
        pump_current_pct=75.0 if on else 0.0,
        diode_current_a=(21.0, 22.0) if on else (0.0, 0.0),
        diode_temperature_c=(26.0, 27.0),
        shg_status=0,
        rf_phase_pct=50.0,
        modelocker_enabled=on,
        pump_error_code=0,
        history=((1,) if on else (0,)) + (0,) * 15,
        watchdog_s=0.0,
    )


def test_refresh_configuration_is_v1s_queries_in_one_lease():
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    port.extend(transcript("refresh"))

    async def body():
        laser = await replayed(port)
        await laser.refresh_configuration()
        return laser

    laser = run(body())
    port.assert_done()
    assert port.transactions[-1] == b"".join(sent for sent, _ in transcript("refresh"))
    assert (latest(laser.emission), latest(laser.status_byte), latest(laser.shutter)) == (1, 15, 1)


@pytest.mark.parametrize(
    ("query", "reply", "error", "words"),
    [
        (b"READ:HUM?\n", b"7.2x6%\n", ReplyError, "'READ:HUM?' is not a humidity in %"),
        (b"SHUTTER?\n", None, InstrumentTimeout, "no reply to 'SHUTTER?'"),
    ],
)
def test_a_refresh_with_a_bad_reply_names_the_laser_and_keeps_no_mix(query, reply, error, words):
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    refresh = transcript("refresh")
    bad = [sent for sent, _ in refresh].index(query)
    port.extend([*refresh[:bad], (query, reply)])  # nothing is asked after the bad reply

    async def body():
        laser = await replayed(port)
        with pytest.raises(error) as err:
            await laser.refresh_configuration()
        return laser, err.value

    laser, exc = run(body())
    port.assert_done()
    assert "'maitai'" in str(exc) and "replay://maitai" in str(exc) and words in str(exc)
    # *STB? had already answered 15 (emission on): no setting keeps a fresh value beside stale
    # ones; every one is still what connect read.
    assert (latest(laser.emission), latest(laser.status_byte), latest(laser.shutter)) == (0, 8, 0)


def test_a_port_without_a_maitai_is_refused_naming_what_answered():
    port = ReplayPort([(b"*IDN?\n", b"Spectra Physics,Tsunami,1234,1.0\n")], url="replay://x")

    async def body():
        await MaiTaiLaser(port, name="maitai").connect()

    with pytest.raises(IdentityMismatch, match="Tsunami") as err:
        run(body())
    port.assert_done()
    assert "MaiTai" in str(err.value) and "replay://x" in str(err.value)


def test_connect_while_tuning_reports_the_actual_wavelength():
    # The transcript's first line is the WAVELENGTH 900 that set the laser tuning (slowly) before
    # the driver connected; the driver's connect is the eleven queries after it.
    pairs = transcript("connect_while_tuning")
    assert pairs[0] == (b"WAVELENGTH 900\n", None) and pairs[11][0] == b"READ:WAV?\n"
    port = ReplayPort(pairs[1:12], url="replay://maitai")
    port.extend([pairs[11]])  # one more READ:WAV?: the laser is still at 820 nm

    async def body():
        laser = await replayed(port)
        return await laser.wavelength.read()

    reading = run(body())
    port.assert_done()
    assert reading["maitai_wavelength"]["value"] == 820.0  # measured: READ:WAV?
    assert reading["maitai_wavelength_setpoint"]["value"] == 900.0  # commanded: WAVELENGTH?


def test_a_target_outside_the_lasers_own_range_is_refused_naming_both_limits():
    port = ReplayPort(transcript("narrow_unit")[:11], url="replay://maitai")  # 710-990 nm

    async def body():
        laser = await replayed(port)  # the profile allows 690-1040 nm
        with pytest.raises(ValueRejected) as err:
            laser.wavelength.set(1000)  # synchronous: refused before any task or byte
        return laser, err.value, await laser.wavelength.describe()

    laser, exc, described = run(body())
    port.assert_done()  # nothing sent after connect
    text = str(exc)
    assert "'maitai'" in text and "replay://maitai" in text
    assert "710-990 nm (WAVELENGTH:MIN?/MAX?)" in text and "profile allows 690-1040 nm" in text
    assert exc.limit == (710.0, 990.0) and laser.wavelength.limits == (710.0, 990.0)
    for key in ("maitai_wavelength", "maitai_wavelength_setpoint"):
        assert described[key]["limits"]["control"] == {"low": 710.0, "high": 990.0}


def test_profile_limits_outside_the_lasers_range_fail_at_connect():
    port = ReplayPort(transcript("narrow_unit")[:3], url="replay://maitai")  # IDN, MIN, MAX

    with pytest.raises(ConfigError) as err:
        run(replayed(port, wavelength_limits=(1000, 1040)))
    port.assert_done()  # nothing read or sent after the range
    assert "wavelength_limits [1000, 1040]" in str(err.value)
    assert "710-990 nm" in str(err.value)


def test_read_errors_empties_the_queue_in_order_in_one_lease():
    port = ReplayPort(transcript("connect"), url="replay://maitai")
    # The transcript pops the queue with SYSTEM:ERR? and SYST:ERR? alike; the driver sends
    # the long form every time.
    popped = [reply for sent, reply in transcript("errors") if b"ERR?" in sent]
    port.extend([(b"SYSTEM:ERR?\n", reply) for reply in popped])

    async def body():
        laser = await replayed(port)
        return await laser.read_errors()

    errors = run(body())
    port.assert_done()
    exe, cmd = (130, "EXE_ERR"), (129, "CMD_ERR")
    assert errors == [exe, cmd, exe, cmd, exe]
    assert port.transactions[-1] == b"SYSTEM:ERR?\n" * 6


# --- parsing and configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit", "value"),
    [
        ("820nm", "nm", 820),
        ("3.000W", "W", 3.0),
        ("0.00000W", "W", 0.0),
        ("100.00%", "%", 100),
        ("+.75E-9W", "W", 0.75e-9),
        ("820 nm", "nm", 820),
        ("13.43w", "W", 13.43),
    ],
)
def test_quantity_parsing(text, unit, value):
    assert _quantity(unit)(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["820W", "820", "abc", "", "8#0nm", "1.2.3nm", "inf nm", "8004m"])
def test_quantity_parsing_rejects(text):
    with pytest.raises(ValueError):
        _quantity("nm")(text)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"reply_terminator": "NUL"}, "reply_terminator"),
        ({"wavelength_limits": (600, 900)}, "wavelength_limits"),
        ({"wavelength_limits": (900, 800)}, "wavelength_limits"),
        ({"timeout": -1}, "timeout"),
        ({"lease_timeout": 0}, "lease_timeout"),
        ({"write_delay": float("nan")}, "write_delay"),
        ({"settle_reads": 0}, "settle_reads"),
        ({"poll_interval": 0}, "poll_interval"),
    ],
)
def test_bad_configuration_is_refused_by_the_constructor(options, key):
    port = ReplayPort([], url="replay://maitai")
    with pytest.raises(ConfigError, match=key) as err:
        MaiTaiLaser(port, name="maitai", **options)
    assert err.value.instrument == "maitai"
    port.assert_done()  # nothing was sent


def test_a_settings_refusal_names_the_port():
    """The settings model's refusal (the profile's words) also names the port the laser is on."""
    port = ReplayPort([], url="replay://maitai")
    with pytest.raises(ConfigError) as err:
        MaiTaiLaser(port, name="maitai", wavelength_limits=(900, 800))
    assert err.value.key == "wavelength_limits" and err.value.resource == "replay://maitai"
    port.assert_done()


def test_a_port_that_is_not_a_leased_port_is_refused():
    with pytest.raises(ConfigError, match="async leases"):
        MaiTaiLaser("/dev/ttyUSB0", name="maitai")  # type: ignore[arg-type]


# --- against the simulator on a pty -------------------------------------------------------------


def test_connect_reads_identity_and_state_from_the_simulator(laser):
    server, maitai = laser({"shutter_open": True})
    sim = server.simulator
    assert "MaiTai" in maitai.identity
    assert latest(maitai.wavelength.readback) == sim.wavelength_nm()
    assert latest(maitai.warmup) == sim.warmup_percent()
    assert latest(maitai.pump_power) == pytest.approx(sim.pump_setpoint_w)
    assert latest(maitai.humidity) == pytest.approx(7.26)  # [I]; the simulator's is fixed
    assert latest(maitai.shutter) == int(sim.shutter_open) == 1
    assert latest(maitai.status_byte) == sim.status_byte()
    assert sim.received_lines == queries("connect")  # queries only


def test_emission_at_connect_is_what_the_laser_reports(laser):
    server, maitai = laser({"emission_on": True})  # left on overnight
    assert latest(maitai.emission) == 1 and server.simulator.emission is True
    assert "ON" not in server.simulator.received_lines


def test_the_descriptor_keeps_v1s_keys_units_precision_limits_and_sources(laser):
    server, maitai = laser()
    source = f"maitai (MaiTai) on {server.path}: "

    def key(dtype, query, units=None, precision=None, limits=None):
        entry = {"dtype": dtype, "shape": [], "source": source + query}
        if units is not None:
            entry["units"] = units
        if precision is not None:
            entry["precision"] = precision
        if limits is not None:
            entry["limits"] = {"control": {"low": limits[0], "high": limits[1]}}
        return entry

    wavelength = {
        "maitai_wavelength": key("number", "READ:WAV?", "nm", 1, (690.0, 1040.0)),
        "maitai_wavelength_setpoint": key("number", "WAVELENGTH", "nm", 1, (690.0, 1040.0)),
    }
    assert on_loop(maitai.describe()) == {
        **wavelength,
        "maitai_power": key("number", "READ:POWER?", "W", 3),
        "maitai_shutter": key("integer", "SHUTTER?"),
    }
    assert on_loop(maitai.describe_configuration()) == {
        "maitai_emission": key("integer", "*STB? bit 0 (set with ON/OFF)"),
        "maitai_warmup": key("number", "READ:PCTWARMEDUP?", "%", 2),
        "maitai_status_byte": key("integer", "*STB?"),
        "maitai_pump_power": key("number", "PLASER:POWER?", "W", 2),
        "maitai_humidity": key("number", "READ:HUM?", "%", 2),
    }
    assert on_loop(maitai.wavelength.describe()) == wavelength
    # v1's order of the recorded keys, and its hints
    assert list(on_loop(maitai.describe())) == [
        "maitai_wavelength",
        "maitai_wavelength_setpoint",
        "maitai_power",
        "maitai_shutter",
    ]
    assert maitai.hints == {"fields": ["maitai_wavelength", "maitai_power"]}
    assert maitai.wavelength.hints == {"fields": ["maitai_wavelength"]}
    assert maitai.wavelength.egu == "nm"


def test_the_laser_and_its_parts_are_what_plans_expect():
    laser = MaiTaiLaser(ReplayPort([], url="replay://maitai"), name="maitai")
    for protocol in (Readable, Configurable, Stageable, Stoppable):
        assert isinstance(laser, protocol), protocol
    # every read asks the laser: nothing to start, so bluesky sends no trigger and no wait
    assert not isinstance(laser, Triggerable)
    for protocol in (Readable, Movable, Stoppable, Locatable):
        assert isinstance(laser.wavelength, protocol), protocol
    assert isinstance(laser.shutter, Movable) and isinstance(laser.emission, Movable)


@pytest.mark.parametrize("term", ["CR", "CRLF", "LF"])
def test_the_profiles_reply_terminator_frames_replies(laser, term):
    server, maitai = laser({"reply_terminator": term}, reply_terminator=term)
    for _ in range(3):
        reading = on_loop(maitai.read())
        assert reading["maitai_wavelength"]["value"] == server.simulator.wavelength_nm()
    assert server.simulator.protocol_errors == []


@pytest.mark.parametrize(("profile", "unit"), [("LF", "CR"), ("CR", "LF"), ("CRLF", "CR")])
def test_a_unit_with_another_reply_terminator_is_followed(laser, caplog, profile, unit):
    # The profile says one terminator, the unit ends its replies with another: the first reply
    # times out, sits complete in the input, is taken, and from then on the unit's terminator
    # frames every exchange (one warning, not one timeout per query).
    caplog.set_level(logging.WARNING, logger="daqbridge.devices.maitai")
    server, maitai = laser({"reply_terminator": unit}, reply_terminator=profile, timeout=0.2)
    assert "MaiTai" in maitai.identity
    for _ in range(3):
        reading = on_loop(maitai.read())
        assert reading["maitai_wavelength"]["value"] == server.simulator.wavelength_nm()
    assert maitai.terminator == REPLY_TERMINATORS[unit]
    followed = [r.getMessage() for r in caplog.records if "following the unit" in r.getMessage()]
    assert len(followed) == 1, followed
    assert f"set reply_terminator = '{unit}' in the profile" in followed[0]
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


def test_watchers_see_the_wavelength_move_while_tuning(laser):
    server, maitai = laser({"speed": 5})  # 250 nm/s: a 200 nm tune takes about 0.8 s
    sim = server.simulator
    updates: list[dict] = []

    async def tune_watched():
        status = maitai.wavelength.set(1000)
        status.watch(lambda **update: updates.append(update))
        await status

    on_loop(tune_watched())
    assert sim.target_wavelength_nm() == 1000.0 and not sim.is_tuning()
    between = {u["current"] for u in updates if 800 < u["current"] < 1000}
    assert len(between) >= 2, updates  # the readback moved while tuning, not only at the end
    assert updates[-1]["current"] == sim.wavelength_nm()
    assert all(u["initial"] == 800.0 and u["target"] == 1000 for u in updates)
    assert all(u["name"] == "maitai_wavelength" and u["unit"] == "nm" for u in updates)


def test_the_shutter_set_is_read_back_from_the_simulator(laser):
    server, maitai = laser()
    sim = server.simulator
    on_loop(put(maitai.shutter, "open"))
    assert sim.shutter_open is True
    assert on_loop(maitai.shutter.get_value()) == 1
    on_loop(put(maitai.shutter, 0))
    assert sim.shutter_open is False


def test_a_shutter_the_laser_ignores_fails_naming_local_mode_until_remote(laser, RE):  # noqa: N803
    server, maitai = laser({"local_mode": True}, shutter_timeout=0.1)
    sim = server.simulator
    with pytest.raises(InstrumentFault, match="MaiTai ignored SHUTTER 1") as err:
        on_loop(put(maitai.shutter, 1))
    assert "local/front-panel mode or an interlock" in str(err.value)
    assert server.path in str(err.value)
    assert sim.shutter_open is False and latest(maitai.shutter) == 0  # what the laser said
    with pytest.raises(FailedStatus):
        RE(bps.mv(maitai.shutter, 1))
    sim.set_local_mode(False)
    RE(bps.mv(maitai.shutter, "open"))
    assert sim.shutter_open is True and latest(maitai.shutter) == 1


@pytest.mark.parametrize(("signal", "value"), [("shutter", 2), ("emission", "maybe")])
def test_switch_values_are_refused_before_any_byte(laser, signal, value):
    server, maitai = laser()
    before = list(server.simulator.received_lines)
    with pytest.raises(ValueRejected, match=repr(value)):
        on_loop(put(getattr(maitai, signal), value))
    assert server.simulator.received_lines == before


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
    sim = server.simulator
    with pytest.raises(InstrumentFault, match="warming up") as err:
        on_loop(put(maitai.emission, 1))
    assert f"reads {latest(maitai.warmup):.2f}%" in str(err.value)
    assert "ON" not in sim.received_lines
    assert sim.emission is False and latest(maitai.emission) == 0


def test_on_is_accepted_once_the_laser_is_warm(laser, wait_until):
    server, maitai = laser({"warmed_up": False, "warmup_s": 1, "speed": 20})  # warm in 50 ms
    sim = server.simulator
    assert wait_until(sim.is_warmed_up)
    on_loop(put(maitai.emission, 1))
    assert "ON" in sim.received_lines
    assert sim.emission is True and sim.status_byte() & 1
    assert latest(maitai.emission) == 1
    on_loop(put(maitai.emission, "off"))
    assert sim.emission is False and latest(maitai.emission) == 0


def test_refresh_reads_settings_changed_behind_the_drivers_back(laser):
    server, maitai = laser()
    sim = server.simulator
    assert (latest(maitai.emission), latest(maitai.shutter)) == (0, 0)
    with sim.lock:  # the front panel, not the driver
        sim.emission = sim.modelocker_enabled = True
        sim.shutter_open = True
        sim.pump_setpoint_w = 11.5
    before = len(sim.received_lines)
    on_loop(maitai.refresh_configuration())
    assert sim.received_lines[before:] == queries("refresh")  # queries only
    assert latest(maitai.emission) == 1 and latest(maitai.shutter) == 1
    assert latest(maitai.pump_power) == pytest.approx(11.5)
    assert latest(maitai.status_byte) == sim.status_byte()


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        ("drop_next", InstrumentTimeout, "no reply to 'READ:POWER?'"),
        ("garble_next", ReplyError, "reply to 'READ:POWER?' is not a power in W (reply: "),
    ],
)
def test_a_dropped_or_garbled_reply_fails_clearly_then_the_next_read_works(
    laser, fault, error, words
):
    server, maitai = laser({"emission_on": True, "shutter_open": True})  # light out: W > 0
    sim = server.simulator
    setattr(sim.faults, fault, 1)
    with pytest.raises(error) as err:
        # call_sync: the synchronous callers' way in. ophyd-async turns a TimeoutError inside a
        # read into TimeoutError(<source>); the instrument's own error is brought back out.
        call_sync(maitai.power.read(), device=maitai, timeout=20)
    text = str(err.value)
    assert words in text and "'maitai'" in text and server.path in text
    power = on_loop(maitai.power.read())["maitai_power"]["value"]
    assert power > 1.0 and power == pytest.approx(sim.output_power_w(), abs=5e-4)


def test_a_garbled_reply_while_tuning_fails_the_move_stops_it_and_the_next_move_works(
    laser, wait_until
):
    server, maitai = laser(SLOW_TUNE)
    sim = server.simulator
    status = on_loop(start(maitai.wavelength, 1000))
    assert wait_until(lambda: sim.wavelength_nm() > 800.5)
    sim.faults.garble_next = 1  # the next reply is a READ:WAV? poll's
    with pytest.raises(ReplyError, match="reply to 'READ:WAV\\?' is not a wavelength in nm") as err:
        on_loop(finish(status))
    assert server.path in str(err.value)
    # The driver lost track of a tuning laser: it must not slew on to 1000 nm.
    assert wait_until(lambda: not sim.is_tuning())
    assert 800 < sim.target_wavelength_nm() < 1000
    target = float(round(sim.wavelength_nm()) + 1)
    on_loop(put(maitai.wavelength, target))  # the next move works
    assert sim.target_wavelength_nm() == target
    # Settled means within tolerance_nm (the laser answers whole nm): the last 0.5 nm may remain.
    assert wait_until(lambda: sim.wavelength_nm() == target)


def test_an_out_of_range_wavelength_is_refused_before_any_byte(laser, RE):  # noqa: N803
    server, maitai = laser(wavelength_limits=(700, 1000))
    sim = server.simulator
    before = list(sim.received_lines)
    with pytest.raises(ValueRejected, match="profile allows 700-1000 nm") as err:
        maitai.wavelength.set(1010)  # synchronous: no status, no task, no query
    assert err.value.limit == (700.0, 1000.0) and server.path in str(err.value)
    with pytest.raises(ValueRejected):
        maitai.wavelength.set("800\nWAV 1040")  # a command smuggled in a target
    with pytest.raises(ValueRejected):
        RE(bps.mv(maitai.wavelength, float("nan")))
    assert sim.received_lines == before


def test_a_target_the_laser_refuses_fails_at_once_with_its_error(laser):
    server, maitai = laser()
    server.simulator.wavelength_max_nm = 950  # said 690-1040 at connect; now refuses 1000
    with pytest.raises(InstrumentFault, match="130, EXE_ERR") as err:
        on_loop(put(maitai.wavelength, 1000), timeout=5)  # tune_timeout is 60 s
    assert "did not take WAVELENGTH 1000" in str(err.value) and server.path in str(err.value)
    assert err.value.code == 130


def test_stop_during_a_tune_halts_it_where_it_is(laser, wait_until):
    server, maitai = laser(SLOW_TUNE)
    sim = server.simulator
    status = on_loop(start(maitai.wavelength, 1000))
    assert wait_until(lambda: sim.wavelength_nm() > 800.5)
    on_loop(maitai.wavelength.stop())
    with pytest.raises(RuntimeError, match="was stopped"):
        on_loop(finish(status))
    assert wait_until(lambda: not sim.is_tuning())
    assert 800 < sim.target_wavelength_nm() < 1000


def test_the_lasers_stop_halts_the_tune_and_closes_the_shutter(laser, wait_until):
    server, maitai = laser(SLOW_TUNE)
    sim = server.simulator
    on_loop(put(maitai.shutter, 1))
    assert sim.shutter_open is True
    status = on_loop(start(maitai.wavelength, 1000))
    assert wait_until(lambda: sim.wavelength_nm() > 800.5)
    on_loop(maitai.stop())
    with pytest.raises(RuntimeError, match="was stopped"):
        on_loop(finish(status))
    assert sim.shutter_open is False and latest(maitai.shutter) == 0
    assert wait_until(lambda: not sim.is_tuning())
    assert 800 < sim.target_wavelength_nm() < 1000
    target = float(round(sim.wavelength_nm()) + 1)
    on_loop(put(maitai.wavelength, target))  # the next move works
    assert sim.target_wavelength_nm() == target
    # Settled means within tolerance_nm (the laser answers whole nm): the last 0.5 nm may remain.
    assert wait_until(lambda: sim.wavelength_nm() == target)


def test_a_plan_that_fails_during_a_tune_stops_the_tune(laser, RE, wait_until):  # noqa: N803
    server, maitai = laser(SLOW_TUNE)
    sim = server.simulator

    def plan():
        yield from bps.abs_set(maitai.wavelength, 1000, group="tune")
        for _ in range(3000):  # until the tune is visibly under way (bounded: 30 s)
            if sim.wavelength_nm() > 800.5:
                break
            yield from bps.sleep(0.01)
        raise RuntimeError("operator abort")

    with pytest.raises(RuntimeError, match="operator abort"):
        RE(plan())
    # Halted where it was (the RunEngine stops what the plan moved), not left slewing to 1000.
    assert wait_until(lambda: not sim.is_tuning())
    assert 800 < sim.target_wavelength_nm() < 1000


def test_re_abort_during_a_tune_stops_the_tune(laser, RE, docs, wait_until):  # noqa: N803
    server, maitai = laser(SLOW_TUNE)
    sim = server.simulator
    aborted = threading.Event()

    def operator():
        if wait_until(lambda: sim.wavelength_nm() > 800.5, timeout=30):
            RE.abort("operator abort")
            aborted.set()

    @bpp.run_decorator()
    def tune():
        yield from bps.abs_set(maitai.wavelength, 1000, group="tune")
        yield from bps.wait(group="tune")

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    with pytest.raises(RunEngineInterrupted):
        RE(tune())
    thread.join(35)
    assert aborted.is_set()
    assert [d["exit_status"] for d in docs.of("stop")] == ["abort"]
    assert wait_until(lambda: not sim.is_tuning())
    assert 800 < sim.target_wavelength_nm() < 1000


def test_unplug_fails_clearly_and_replug_recovers(laser):
    server, maitai = laser()
    sim = server.simulator
    server.unplug()
    with pytest.raises(PortUnavailable) as err:
        on_loop(maitai.power.read())
    assert server.path in str(err.value) and err.value.instrument == "maitai"
    server.replug()
    before = len(sim.received_lines)
    reading = on_loop(maitai.wavelength.readback.read())
    assert reading["maitai_wavelength"]["value"] == sim.wavelength_nm()
    # The lease reopened the port and the laser proved itself again before the query.
    assert sim.received_lines[before:] == ["*IDN?", "READ:WAV?"]
    assert maitai.port.generation >= 2 and maitai.verified_generation == maitai.port.generation


# --- in a real RunEngine ------------------------------------------------------------------------


def test_a_wavelength_scan_records_each_point(laser, RE, docs):  # noqa: N803
    server, maitai = laser()
    sim = server.simulator
    RE(bps.mv(maitai.shutter, 1, maitai.emission, 1))
    RE(bp.scan([maitai], maitai.wavelength, 780, 820, 5))
    docs.validate()
    events = docs.events()
    assert [e["data"]["maitai_wavelength"] for e in events] == [780, 790, 800, 810, 820]
    assert [e["data"]["maitai_wavelength_setpoint"] for e in events] == [780, 790, 800, 810, 820]
    for event in events:  # read once settled: the simulator's full power at that wavelength
        expected = sim.peak_power_w * sim.gain(event["data"]["maitai_wavelength"])
        assert event["data"]["maitai_power"] == pytest.approx(expected, abs=5e-4)
    (descriptor,) = docs.of("descriptor")
    assert descriptor["data_keys"]["maitai_wavelength"]["units"] == "nm"
    assert descriptor["data_keys"]["maitai_power"]["units"] == "W"
    config = descriptor["configuration"]["maitai"]["data"]
    assert config["maitai_emission"] == 1 and config["maitai_warmup"] == 100.0
    assert sim.wavelength_nm() == 820.0
    assert sim.protocol_errors == []


def test_a_sim_url_laser_in_count_mv_and_list_scan(serial_pool, sim_name, RE, docs):  # noqa: N803
    name = sim_name("maitai")
    port = serial_pool.open(f"sim://maitai?name={name}&warmed_up=1&speed=100")
    maitai = MaiTaiLaser(port, name="laser", **FAST)
    on_loop(maitai.connect())
    RE(bp.count([maitai], 3))
    RE(bps.mv(maitai.wavelength, 950))
    RE(bp.list_scan([maitai], maitai.wavelength, [900, 850]))
    docs.validate()
    events = docs.events()
    assert [e["data"]["laser_wavelength"] for e in events] == [800, 800, 800, 900, 850]
    assert lookup(name).wavelength_nm() == 850.0
