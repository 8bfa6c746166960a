"""MaiTaiLaser against the MaiTai simulator over real ptys and sim:// URLs, with a real RunEngine.

Speed factors keep tuning and warm-up short; every wait is bounded.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import event_model
import pytest
import yaml
from bluesky import RunEngine
from bluesky.protocols import (
    Configurable,
    Locatable,
    Movable,
    Readable,
    Stageable,
    Stoppable,
    Triggerable,
)
from bluesky.utils import FailedStatus

from daqbridge.devices.maitai import MaiTaiDiagnostics, MaiTaiLaser, _parse_quantity
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
from daqbridge.sim import serve_pty, unregister
from daqbridge.transport import SerialPortPool

FAST = {"write_delay": 0.0, "reply_timeout": 0.5, "poll_interval": 0.01}
TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "maitai.yaml"


def pairs_of(section: str) -> list[tuple[str, str | None]]:
    """(sent, reply) lines of one section of tests/transcripts/maitai.yaml, terminators removed:
    the pairs the simulator tests check the simulator against."""
    exchanges = yaml.safe_load(TRANSCRIPTS.read_text())[section]["exchanges"]
    return [(sent.strip(), None if reply is None else reply.strip()) for sent, reply in exchanges]


def replies(*sections: str) -> dict[str, bytes | None]:
    """What a transcript peer answers: each line of the sections, as the laser replied to it."""
    answers: dict[str, bytes | None] = {}
    for section in sections:
        for sent, reply in pairs_of(section):
            answers[sent] = None if reply is None else reply.encode() + b"\n"
    return answers


CONNECT_QUERIES = [sent for sent, _ in pairs_of("connect")]


class InOrder(dict):
    """Replies for a peer whose answer to one line changes: a list is answered one per query."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return value.pop(0) if isinstance(value, list) else value


def wait_until(predicate, timeout=5.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def pool():
    with SerialPortPool() as p:
        yield p


@pytest.fixture
def laser_on_pty(pool):
    """Build (simulator server, connected laser) pairs; everything is closed afterwards."""
    made = []

    def make(sim_options=None, **laser_options):
        options = {"warmed_up": True, "speed": 50, **(sim_options or {})}
        cm = serve_pty("maitai", **options)
        server = cm.__enter__()
        made.append((cm, None))
        laser = MaiTaiLaser.from_url(server.path, pool=pool, **{**FAST, **laser_options})
        made[-1] = (cm, laser)
        return server, laser

    yield make
    for cm, laser in reversed(made):
        if laser is not None:
            laser.close()
        cm.__exit__(None, None, None)


@pytest.fixture
def RE():
    return RunEngine({}, context_managers=[])


def collect(RE):
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def validate(docs):
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)


# --- identity, description, protocols -------------------------------------------------------------


def test_connect_reads_identity_and_state(laser_on_pty):
    server, laser = laser_on_pty()
    assert "MaiTai" in laser.identity
    assert laser.wavelength.position == pytest.approx(800.0)
    assert laser.warmup.get() == pytest.approx(100.0)
    assert laser.pump_power.get() == pytest.approx(13.43)
    assert laser.humidity.get() == pytest.approx(7.26)
    assert laser.shutter.get() == 0
    assert laser.status_byte.get() == server.simulator.status_byte()


def test_describe_units_sources_and_protocols(laser_on_pty):
    server, laser = laser_on_pty()
    desc = laser.describe()
    assert desc["maitai_wavelength"]["units"] == "nm"
    assert desc["maitai_power"]["units"] == "W"
    assert desc["maitai_wavelength"]["limits"]["control"] == {"low": 690.0, "high": 1040.0}
    assert server.path in desc["maitai_power"]["source"]
    assert "READ:POWER?" in desc["maitai_power"]["source"]
    conf = laser.describe_configuration()
    assert conf["maitai_warmup"]["units"] == "%"
    assert conf["maitai_pump_power"]["units"] == "W"
    assert set(laser.hints["fields"]) == {"maitai_wavelength", "maitai_power"}
    for proto in (Readable, Triggerable, Configurable, Stageable, Stoppable):
        assert isinstance(laser, proto), proto
    for proto in (Readable, Movable, Stoppable, Locatable):
        assert isinstance(laser.wavelength, proto), proto
    assert isinstance(laser.shutter, Movable)
    assert laser.wavelength.egu == "nm"


def test_identity_mismatch_names_what_answered(pool, tmp_path):
    # A real pty whose far end is another laser model.
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    path = os.ttyname(slave)
    stop = threading.Event()

    def answer():
        buf = b""
        while not stop.is_set():
            try:
                import select

                r, _, _ = select.select([master], [], [], 0.05)
                if not r:
                    continue
                buf += os.read(master, 1024)
            except OSError:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip().upper() == b"*IDN?":
                    os.write(master, b"Spectra Physics,Tsunami,1234,1.0\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(IdentityMismatch) as err:
            MaiTaiLaser.from_url(path, pool=pool, flow_control="none", **FAST)
        assert "Tsunami" in str(err.value) and "MaiTai" in str(err.value)
        assert path in str(err.value)
    finally:
        stop.set()
        t.join(2)
        os.close(master)
        os.close(slave)


# --- wavelength as a positioner -----------------------------------------------------------------


def test_scan_over_wavelength_records_each_point(laser_on_pty, RE):
    server, laser = laser_on_pty()
    docs = collect(RE)
    RE(bps.mv(laser.shutter, 1))
    laser.turn_on()
    (uid,) = RE(bp.scan([laser], laser.wavelength, 780, 820, 5))
    validate(docs)
    events = [d for n, d in docs if n == "event"]
    assert [e["data"]["maitai_wavelength"] for e in events] == [780, 790, 800, 810, 820]
    assert all(e["data"]["maitai_power"] > 1.0 for e in events)  # emission on, shutter open
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    assert descriptor["data_keys"]["maitai_wavelength"]["units"] == "nm"
    assert descriptor["data_keys"]["maitai_power"]["units"] == "W"
    conf = descriptor["configuration"]["maitai"]["data"]
    assert conf["maitai_emission"] == 1 and conf["maitai_warmup"] == 100.0
    assert server.simulator.wavelength_nm() == pytest.approx(820)


def test_mv_reports_progress_while_tuning(laser_on_pty):
    server, laser = laser_on_pty({"speed": 5})  # 250 nm/s: a 200 nm tune takes ~0.8 s
    seen = []
    status = laser.wavelength.set(1000)
    status.watch(lambda *a, current=None, **kw: seen.append(current))
    status.wait(10)
    assert laser.wavelength.position == pytest.approx(1000)
    between = {v for v in seen if v is not None and 800 < v < 1000}
    assert len(between) >= 2, seen  # the readback moved while tuning, not only at the end
    assert server.simulator.target_wavelength_nm() == pytest.approx(1000)


def test_wavelength_outside_profile_limits_is_refused_before_sending(laser_on_pty):
    server, laser = laser_on_pty(wavelength_limits=(700, 1000))
    sent = len(server.simulator.received_lines)
    with pytest.raises(ValueRejected) as err:
        laser.wavelength.set(1010)
    assert "1000" in str(err.value)
    with pytest.raises(ValueRejected):
        laser.wavelength.set("800\nWAV 1040")
    with pytest.raises(ValueRejected):
        laser.wavelength.set(float("nan"))
    assert len(server.simulator.received_lines) == sent


def test_stop_halts_tuning_and_closes_shutter(laser_on_pty):
    # 5 nm/s: the 200 nm tune takes 40 s, far longer than a loaded machine can stall the test
    # between seeing the tune under way and stopping it.
    server, laser = laser_on_pty({"speed": 1, "tuning_rate_nm_s": 5})
    sim = server.simulator
    laser.open_shutter(timeout=5)
    status = laser.wavelength.set(1000)
    assert wait_until(lambda: 805 < (laser.wavelength.position or 0) < 990, 30)
    laser.stop()
    with pytest.raises(InstrumentError, match="stopped"):
        status.wait(5)
    assert wait_until(lambda: not sim.is_tuning(), 30)
    assert sim.wavelength_nm() < 990
    assert wait_until(lambda: laser.shutter.get() == 0, 5)
    assert sim.status_byte() & 4 == 0  # the simulator's shutter-open bit
    laser.wavelength.set(sim.wavelength_nm() + 1).wait(5)  # the next move works


def test_abort_during_tune_stops_it(laser_on_pty, RE):
    server, laser = laser_on_pty({"speed": 1, "tuning_rate_nm_s": 5})  # a 40 s tune, as above
    sim = server.simulator

    def plan():
        yield from bps.abs_set(laser.wavelength, 1000, group="tune")
        for _ in range(3000):  # until the tune is visibly under way (bounded)
            if (laser.wavelength.position or 0) > 805:
                break
            yield from bps.sleep(0.01)
        raise RuntimeError("operator abort")

    with pytest.raises(RuntimeError, match="operator abort"):
        RE(plan())
    # The tune was halted where it was, not left running to 1000 nm.
    assert wait_until(lambda: not sim.is_tuning() and sim.target_wavelength_nm() < 990, 30)


# --- shutter and emission -----------------------------------------------------------------------


def test_shutter_ignored_in_local_mode_fails_clearly(laser_on_pty, RE):
    server, laser = laser_on_pty({"local_mode": True}, shutter_timeout=0.2)
    with pytest.raises(InstrumentFault) as err:
        laser.shutter.set(1).wait(5)
    assert (
        "MaiTai ignored SHUTTER 1: the laser may be in local/front-panel mode or an interlock "
        "is open"
    ) in str(err.value)
    assert server.path in str(err.value)
    assert laser.shutter.get() == 0  # the cached value is what the laser reported
    with pytest.raises(FailedStatus):
        RE(bps.mv(laser.shutter, 1))
    server.simulator.set_local_mode(False)
    RE(bps.mv(laser.shutter, "open"))
    assert laser.shutter.get() == 1
    with pytest.raises(ValueRejected):
        laser.shutter.set(2)


def test_on_refused_before_warm_up(laser_on_pty):
    server, laser = laser_on_pty({"warmed_up": False, "warmup_s": 600, "speed": 1})
    with pytest.raises(InstrumentFault, match="warming up") as err:
        laser.turn_on()
    assert "%" in str(err.value)
    assert "ON" not in server.simulator.received_lines  # refused before anything was sent
    assert laser.emission.get() == 0
    with pytest.raises(ValueRejected):
        laser.emission.set("maybe")


def test_on_accepted_once_warm(laser_on_pty):
    server, laser = laser_on_pty({"warmed_up": False, "warmup_s": 1, "speed": 20})
    assert wait_until(lambda: server.simulator.is_warmed_up(), 5)
    laser.turn_on()
    assert wait_until(lambda: "ON" in server.simulator.received_lines)  # set commands are silent
    assert wait_until(lambda: server.simulator.status_byte() & 1)  # emission on
    laser.turn_off()
    assert laser.emission.get() == 0


# --- terminators, faults, sim:// -------------------------------------------------------------


@pytest.mark.parametrize("term", ["CR", "CRLF", "LF"])
def test_reply_terminators(laser_on_pty, term):
    server, laser = laser_on_pty({"reply_terminator": term}, reply_terminator=term)
    for _ in range(3):
        laser.trigger().wait(5)
    assert laser.wavelength.position == pytest.approx(800)
    assert server.simulator.protocol_errors == []


def test_unit_with_another_terminator_is_followed(laser_on_pty):
    # Profile says LF, the unit ends replies with CR: the first reply times out, is recognised
    # as a CR line, and from then on replies are read up to CR.
    server, laser = laser_on_pty(
        {"reply_terminator": "CR"}, reply_terminator="LF", reply_timeout=0.2
    )
    assert "MaiTai" in laser.identity
    laser.trigger().wait(5)
    assert laser._read_term == b"\r"


def test_dropped_and_garbled_replies_fail_clearly_then_recover(laser_on_pty):
    server, laser = laser_on_pty(reply_timeout=0.3)
    sim = server.simulator
    sim.faults.drop_next = 1
    with pytest.raises(InstrumentTimeout) as err:
        laser.trigger().wait(5)
    assert "READ:POWER?" in str(err.value) and server.path in str(err.value)
    laser.trigger().wait(5)  # the next reading works

    sim.faults.garble_next = 1
    with pytest.raises(ReplyError) as err:
        laser.trigger().wait(5)
    assert "reply:" in str(err.value)
    laser.trigger().wait(5)

    sim.faults.garble_next = 1
    with pytest.raises(ReplyError):
        laser.wavelength.set(805).wait(5)
    laser.wavelength.set(810).wait(5)
    assert laser.wavelength.position == pytest.approx(810)


def test_emission_at_connect_is_what_the_laser_reports(laser_on_pty):
    server, laser = laser_on_pty({"emission_on": True})  # left on overnight
    assert laser.emission.get() == 1


def test_refresh_reads_settings_changed_behind_the_drivers_back(laser_on_pty):
    server, laser = laser_on_pty()
    sim = server.simulator
    assert (laser.emission.get(), laser.shutter.get()) == (0, 0)
    with sim.lock:  # the front panel, not the driver
        sim.emission = sim.modelocker_enabled = True
        sim.shutter_open = True
        sim.pump_setpoint_w = 11.5
    before = len(sim.received_lines)
    laser.refresh_configuration()
    conf = {key: reading["value"] for key, reading in laser.read_configuration().items()}
    assert conf["maitai_emission"] == 1 and conf["maitai_pump_power"] == pytest.approx(11.5)
    assert conf["maitai_status_byte"] == sim.status_byte()
    assert laser.shutter.get() == 1
    assert sim.received_lines[before:] == [sent for sent, _ in pairs_of("refresh")]


def test_refresh_transcript(transcript, pool):
    peer = transcript(replies("connect"))
    laser = connect_to(peer, pool)
    try:
        peer.replies.update(replies("refresh"))
        laser.refresh_configuration()
        assert peer.received[len(CONNECT_QUERIES) :] == [sent for sent, _ in pairs_of("refresh")]
        assert (laser.emission.get(), laser.status_byte.get(), laser.shutter.get()) == (1, 15, 1)
    finally:
        laser.close()


@pytest.mark.parametrize(
    ("query", "reply", "error", "words"),
    [
        ("READ:HUM?", b"7.2x6%\n", ReplyError, "humidity"),
        ("SHUTTER?", None, InstrumentTimeout, "SHUTTER?"),
    ],
)
def test_refresh_with_a_bad_reply_names_the_laser(transcript, pool, query, reply, error, words):
    peer = transcript(replies("connect"))
    laser = connect_to(peer, pool, reply_timeout=0.3)
    try:
        peer.replies.update({**replies("refresh"), query: reply})
        with pytest.raises(error) as err:
            laser.refresh_configuration()
        message = str(err.value)
        assert "'maitai'" in message and peer.path in message and words in message
        assert laser.emission.get() == 0  # no mix of fresh and stale settings
    finally:
        laser.close()


def test_sim_url_and_event_model_documents(pool, RE):
    name = f"maitai-{uuid.uuid4().hex[:8]}"
    laser = MaiTaiLaser.from_url(
        f"sim://maitai?name={name}&warmed_up=1&speed=100", pool=pool, name="laser", **FAST
    )
    try:
        docs = collect(RE)
        RE(bp.count([laser], 3))
        RE(bps.mv(laser.wavelength, 950))
        RE(bp.list_scan([laser], laser.wavelength, [900, 850]))
        validate(docs)
        events = [d for n, d in docs if n == "event"]
        assert [e["data"]["laser_wavelength"] for e in events] == [800, 800, 800, 900, 850]
    finally:
        laser.close()
        unregister(name)


def test_unplug_gives_clear_error_and_replug_recovers(laser_on_pty):
    server, laser = laser_on_pty(reply_timeout=0.3)
    server.unplug()
    with pytest.raises(PortUnavailable) as err:
        laser.trigger().wait(5)
    assert server.path in str(err.value)
    server.replug()
    laser.trigger().wait(5)  # the lease reopens the port; identity is checked again
    assert laser.port.generation >= 2


# --- parsing and configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, unit, value",
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
    assert _parse_quantity(text, unit, what="x", instrument="m", resource="p") == pytest.approx(
        value
    )


@pytest.mark.parametrize("text", ["820W", "820", "abc", "", "8#0nm", "1.2.3nm", "inf nm", "8004m"])
def test_quantity_parsing_rejects(text):
    with pytest.raises(ReplyError):
        _parse_quantity(text, "nm", what="x", instrument="m", resource="p")


def test_bad_configuration_is_refused(pool):
    port = pool.open(f"sim://maitai?name=cfg-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConfigError, match="reply_terminator"):
        MaiTaiLaser(port, reply_terminator="NUL")
    with pytest.raises(ConfigError, match="wavelength_limits"):
        MaiTaiLaser(port, wavelength_limits=(600, 900))
    with pytest.raises(ConfigError, match="reply_timeout"):
        MaiTaiLaser(port, reply_timeout=-1)
    with pytest.raises(ConfigError):
        MaiTaiLaser("/dev/ttyUSB0")
    laser = MaiTaiLaser(port)
    with pytest.raises(InstrumentError, match="not connected"):
        laser.wavelength.set(800)
    laser.close()


# --- the laser's own range, commanded vs actual wavelength, diagnostics (issue 14) ---------------
# Pinned to tests/transcripts/maitai.yaml: the peer answers exactly what the simulator answers.


def connect_to(transcript_peer, pool, **laser_options):
    return MaiTaiLaser.from_url(
        transcript_peer.path, pool=pool, flow_control="none", **{**FAST, **laser_options}
    )


def test_connect_transcript(transcript, pool):
    peer = transcript(replies("connect"))
    laser = connect_to(peer, pool)
    try:
        assert peer.received == CONNECT_QUERIES
        assert laser.laser_wavelength_limits == (690.0, 1040.0)
        assert laser.wavelength.setpoint.get() == 820.0
        assert laser.wavelength.position == 820.0
    finally:
        laser.close()


def test_connect_while_tuning_reports_the_actual_wavelength(transcript, pool):
    peer = transcript(replies("connect_while_tuning"))  # WAVELENGTH? 900nm, READ:WAV? 820nm
    laser = connect_to(peer, pool)
    try:
        assert laser.wavelength.position == 820.0  # measured: READ:WAVELENGTH?
        assert laser.wavelength.setpoint.get() == 900.0  # commanded: WAVELENGTH?
        assert laser.read()["maitai_wavelength"]["value"] == 820.0
    finally:
        laser.close()


def test_target_outside_the_lasers_own_range_is_refused_naming_both_limits(transcript, pool):
    peer = transcript(replies("narrow_unit"))  # WAVELENGTH:MIN? 710nm, MAX? 990nm
    laser = connect_to(peer, pool)  # the profile allows 690-1040 nm
    try:
        sent = len(peer.received)
        with pytest.raises(ValueRejected) as err:
            laser.wavelength.set(1000)
        text = str(err.value)
        assert "maitai" in text and peer.path in text
        assert "710-990 nm (WAVELENGTH:MIN?/MAX?)" in text and "profile allows 690-1040 nm" in text
        assert len(peer.received) == sent  # refused before anything was sent
        assert laser.wavelength.limits == (710.0, 990.0)
        limits = laser.describe()["maitai_wavelength"]["limits"]["control"]
        assert limits == {"low": 710.0, "high": 990.0}
    finally:
        laser.close()


def test_profile_limits_outside_the_lasers_range_fail_at_connect(transcript, pool):
    peer = transcript(replies("narrow_unit"))
    with pytest.raises(ConfigError) as err:
        connect_to(peer, pool, wavelength_limits=(1000, 1040))
    assert "wavelength_limits [1000, 1040]" in str(err.value)
    assert "710-990 nm" in str(err.value)


@pytest.mark.parametrize(("section", "on"), [("diagnostics_off", False), ("diagnostics_on", True)])
def test_diagnostics_transcript(transcript, pool, section, on):
    peer = transcript(replies("connect", section))
    laser = connect_to(peer, pool)
    try:
        diagnostics = laser.diagnostics()
        asked = peer.received[len(CONNECT_QUERIES) :]
        assert asked == [q for q, _ in pairs_of(section) if q != "SYSTEM:ERR?"]
    finally:
        laser.close()
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


def test_read_errors_empties_the_queue_in_order(transcript, pool):
    peer = transcript(replies("connect"))
    in_order = [reply.encode() + b"\n" for sent, reply in pairs_of("errors") if "ERR?" in sent]
    peer.replies = InOrder({**peer.replies, "SYSTEM:ERR?": in_order})
    laser = connect_to(peer, pool)
    try:
        errors = laser.read_errors()
    finally:
        laser.close()
    exe, cmd = (130, "EXE_ERR"), (129, "CMD_ERR")
    assert errors == [exe, cmd, exe, cmd, exe]
    assert peer.received[len(CONNECT_QUERIES) :] == ["SYSTEM:ERR?"] * 6


def test_a_target_the_laser_refuses_fails_at_once_with_its_error(laser_on_pty):
    server, laser = laser_on_pty()  # the laser said 690-1040 nm at connect ...
    server.simulator.wavelength_max_nm = 950  # ... and now refuses above 950 nm (EXE_ERR)
    status = laser.wavelength.set(1000)
    with pytest.raises(InstrumentFault) as err:
        status.wait(10)  # tune_timeout is 60 s: only the WAVELENGTH? check ends it this soon
    text = str(err.value)
    assert "did not take WAVELENGTH 1000" in text and "130, EXE_ERR" in text
    assert server.path in text
    assert err.value.code == 130
