"""Legacy MaiTai driver against the laser simulator on a real pty, through SerialPortPool."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from daqbridge.errors import (
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ValueRejected,
)
from daqbridge.legacy import Command, LegacyRuntime, MaiTai, parse_legacy_config
from daqbridge.legacy._maitai import parse_quantity
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool
from tests.devices.conftest import TranscriptPeer
from tests.legacy.legacy_test_instruments import wait_until

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "maitai.yaml"


@pytest.fixture
def pool():
    with SerialPortPool() as p:
        yield p


def _runtime(path: str, pool: SerialPortPool, extra: str = "", rate: float = 10) -> LegacyRuntime:
    cfg = parse_legacy_config(
        f"""
[instruments.laser]
type = "maitai"
port = "{path}"
polling_rate_hz = {rate}
command_gap_s = 0.005
readback_timeout_s = 0.5
{extra}
""",
        source="test.toml",
    )
    return LegacyRuntime.from_config(cfg, pool)


def test_quantity_parser_reads_unit_suffixes():
    assert parse_quantity("820nm", "nm") == 820.0
    assert parse_quantity("3.000W", "W") == 3.0
    assert parse_quantity("0.00000W", "W") == 0.0
    assert parse_quantity("100.00%", "%") == 100.0
    assert parse_quantity("8") == 8.0
    with pytest.raises(ValueError, match="in 'nm'"):
        parse_quantity("3.000W", "nm")  # someone else's answer
    with pytest.raises(ValueError):
        parse_quantity("82#nm", "nm")


def test_readings_shutter_emission_and_wavelength(pool):
    with serve_pty("maitai", warmed_up=True, tuning_rate_nm_s=200, speed=20) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool)
        feed = rt.distributor.subscribe(name="feed", maxsize=10_000)
        rt.start()
        try:
            assert rt.wait_running(10), rt.health()
            assert wait_until(lambda: feed.qsize() >= 4, 5)
            first = {m.channel: m for m in feed.drain()[:4]}
            assert first["wavelength"].value == 800.0 and first["wavelength"].unit == "nm"
            assert first["power"].value == 0.0 and first["shutter"].value == 0
            assert first["warmup"].value == 100.0 and first["warmup"].unit == "%"
            assert "MaiTai" in rt.instruments["laser"].identity

            assert rt.submit("laser", Command.execute("on"), timeout=5).ok
            assert sim.emission is True
            opened = rt.submit("laser", Command.set("shutter", 1), timeout=5)
            assert opened.ok and opened.value == 1 and sim.shutter_open is True
            power = rt.submit("laser", Command.query("power"), timeout=5)
            assert power.value == pytest.approx(3.0, abs=0.01)

            tuned = rt.submit("laser", Command.set("wavelength", 900), timeout=10)
            assert tuned.ok and tuned.value == pytest.approx(900, abs=1)
            assert sim.wavelength_nm() == pytest.approx(900)
            status = rt.submit("laser", Command.query("status"), timeout=5).value
            assert status & 1 and status & 4  # emission on, shutter open

            # The poller keeps writing while this runs: count only wavelength set commands.
            def wavelength_sets() -> list[str]:
                return [
                    line
                    for line in list(sim.received_lines)
                    if line.upper().startswith("WAV") and not line.endswith("?")
                ]

            sets_before = wavelength_sets()
            bad = rt.submit("laser", Command.set("wavelength", 1100), timeout=5)
            assert not bad.ok and isinstance(bad.error, ValueRejected)
            assert wavelength_sets() == sets_before  # refused before the wire

            assert rt.submit("laser", Command.set("shutter", 0), timeout=5).ok
            assert rt.submit("laser", Command.execute("off"), timeout=5).ok
            assert sim.emission is False
            assert sim.protocol_errors == [] and rt.health()["laser"]["restarts"] == 0
        finally:
            assert rt.stop(5)


def test_ignored_shutter_and_refused_on_are_reported(pool):
    with serve_pty("maitai", warmup_s=3600, local_mode=True, speed=1) as server:
        rt = _runtime(server.path, pool, rate=2)
        rt.start()
        try:
            assert rt.wait_running(10)
            on = rt.submit("laser", Command.execute("on"), timeout=5)
            assert not on.ok and isinstance(on.error, InstrumentFault)
            assert "warming up" in on.message
            assert server.simulator.emission is False
            shutter = rt.submit("laser", Command.set("shutter", 1), timeout=5)
            assert not shutter.ok and isinstance(shutter.error, InstrumentFault)
            assert "still reports 0" in shutter.message and "local" in shutter.message
        finally:
            assert rt.stop(5)


@pytest.mark.parametrize("terminator", ["CR", "CRLF"])
def test_configurable_reply_terminator(pool, terminator):
    with serve_pty("maitai", warmed_up=True, reply_terminator=terminator, speed=20) as server:
        rt = _runtime(server.path, pool, f'terminator = "{terminator}"')
        rt.start()
        try:
            assert rt.wait_running(10), rt.health()
            assert rt.submit("laser", Command.query("wavelength"), timeout=5).value == 800.0
            assert rt.submit("laser", Command.query("humidity"), timeout=5).value == 7.26
            assert server.simulator.protocol_errors == []
        finally:
            assert rt.stop(5)


def test_polling_while_a_native_driver_queries_through_a_lease(pool):
    with serve_pty("maitai", warmed_up=True, speed=20) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool, rate=50)
        feed = rt.distributor.subscribe(name="feed", maxsize=100_000, channels=["wavelength"])
        rt.start()
        try:
            assert rt.wait_running(10)
            native = pool.open(server.path, baudrate=9600)
            replies: list[bytes] = []
            errors: list[BaseException] = []

            def native_driver():
                try:
                    for _ in range(60):
                        with native.lease("native_laser", 5.0) as lease:
                            lease.drain()
                            replies.append(lease.query(b"READ:POWER?\n", b"\n", 2.0))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            t = threading.Thread(target=native_driver)
            t.start()
            t.join(60)
            assert not t.is_alive() and errors == []
            assert set(replies) == {b"0.00000W"}
            assert wait_until(lambda: rt.health()["laser"]["polls"] >= 10, 10)
            assert all(m.value == 800.0 for m in feed.drain())
            assert sim.protocol_errors == [] and rt.health()["laser"]["restarts"] == 0
        finally:
            assert rt.stop(5)


def test_wrong_identity_is_refused(pool):
    with serve_pty("esp300", speed=100) as server:  # answers *IDN?, but is a motion controller
        laser = MaiTai("laser", pool, server.path, timeout_s=0.5, command_gap_s=0)
        with pytest.raises(IdentityMismatch, match="ESP300") as info:
            laser.connect()
        assert "'laser'" in str(info.value) and "Fix:" in str(info.value)
        laser.disconnect()
    with serve_pty("newport1830c", speed=100) as server:  # silent on *IDN?
        laser = MaiTai("laser", pool, server.path, timeout_s=0.3, command_gap_s=0)
        with pytest.raises(InstrumentTimeout, match=r"no reply to '\*IDN\?'"):
            laser.connect()


def test_a_refused_wavelength_is_seen_in_the_commanded_value(pool):
    """The real laser's *STB? has no "refused" bit: a peer replays the narrow unit's replies."""
    section = yaml.safe_load(TRANSCRIPTS.read_text(encoding="utf-8"))["narrow_unit"]
    replies = {sent.strip(): reply.encode() for sent, reply in section["exchanges"] if reply}
    assert replies["*STB?"] == b"8\n" and replies["WAVELENGTH?"] == b"820nm\n"
    peer = TranscriptPeer(replies)
    laser = MaiTai("laser", pool, peer.path, timeout_s=0.5, command_gap_s=0, settle_timeout_s=1)
    try:
        laser.connect()
        refused = laser.handle(Command.set("wavelength", 1000))
        assert not refused.ok and isinstance(refused.error, InstrumentFault)
        message = str(refused.error)
        assert "refused wavelength 1000 nm" in message and "still 820 nm" in message
        assert "'laser'" in message and peer.path in message
        assert "READ:WAV?" not in peer.received  # no waiting for a tuning that never starts
    finally:
        laser.disconnect()
        peer.close()


def test_a_port_that_cannot_be_opened_names_the_laser(pool, tmp_path):
    missing = str(tmp_path / "ttyUSB-not-there")
    laser = MaiTai("laser", pool, missing, timeout_s=0.3, command_gap_s=0)
    with pytest.raises(PortUnavailable) as err:
        laser.connect()
    assert err.value.instrument == "laser" and "'laser'" in str(err.value)
    assert missing in str(err.value)
