"""Legacy Newport 1830-C driver against the simulator on a real pty, through SerialPortPool."""

from __future__ import annotations

import math
import threading

import pytest

from daqbridge.errors import (
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.legacy import Command, LegacyRuntime, parse_legacy_config
from daqbridge.legacy._newport1830c import Newport1830C, parse_reading
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool
from tests.devices.conftest import TranscriptPeer
from tests.legacy.legacy_test_instruments import wait_until


@pytest.fixture
def pool():
    with SerialPortPool() as p:
        yield p


def _runtime(path: str, pool: SerialPortPool, extra: str = "", rate: float = 20) -> LegacyRuntime:
    cfg = parse_legacy_config(
        f"""
[instruments.meter]
type = "newport_1830c"
port = "{path}"
polling_rate_hz = {rate}
timeout_s = 1.0
{extra}
""",
        source="test.toml",
    )
    return LegacyRuntime.from_config(cfg, pool)


@pytest.mark.parametrize(
    ("reply", "value", "status"),
    [
        ("+.75E-9", 0.75e-9, None),
        ("5E-9", 5e-9, None),
        ("-15.24", -15.24, None),
        ("OVER", math.nan, "OVER"),
        ("UNDER", math.nan, "UNDER"),
    ],
)
def test_reading_parser_follows_the_manual(reply, value, status):
    got, why = parse_reading(reply)
    assert why == status
    assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value)


def test_reading_parser_rejects_garbage():
    with pytest.raises(ValueError):
        parse_reading("+.7#E-9")


def test_power_readings_and_confirmed_sets(pool):
    with serve_pty("newport1830c", noise=0, input_power=1.234e-6, speed=100) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool, 'wavelength_nm = 633\nfilter = "medium"')
        feed = rt.distributor.subscribe(name="feed")
        rt.start()
        try:
            assert rt.wait_running(10), rt.health()
            m = feed.get(timeout=5)
            assert (m.instrument_id, m.channel, m.unit) == ("meter", "power", "W")
            assert m.value == pytest.approx(1.234e-6, rel=1e-3)
            # Connect turned echo off and units to W, and applied the configured keys.
            assert sim.received_lines[:1] == ["E0"] and sim.wavelength == 633 and sim.filter == 2

            ok = rt.submit("meter", Command.set("wavelength", 780), timeout=5)
            assert ok.ok and ok.value == 780 and sim.wavelength == 780
            assert rt.submit("meter", Command.query("wavelength"), timeout=5).value == 780
            assert rt.submit("meter", Command.set("filter", "fast"), timeout=5).ok
            assert rt.submit("meter", Command.query("filter"), timeout=5).value == "fast"
            assert rt.submit("meter", Command.set("attenuator", True), timeout=5).ok
            assert sim.attenuator is True
            assert rt.submit("meter", Command.query("attenuator"), timeout=5).value is True

            sent = len(sim.received_lines)
            bad = rt.submit("meter", Command.set("wavelength", 1200), timeout=5)
            assert not bad.ok and isinstance(bad.error, ValueRejected)
            assert len(sim.received_lines) == sent  # refused before the wire
            assert rt.health()["meter"]["restarts"] == 0
            assert sim.protocol_errors == []
        finally:
            assert rt.stop(5)


def test_units_and_out_of_range_readings(pool):
    with serve_pty("newport1830c", noise=0, input_power=1e-6, speed=100) as server:
        rt = _runtime(server.path, pool, rate=50)
        feed = rt.distributor.subscribe(name="feed")
        rt.start()
        try:
            assert rt.wait_running(10)
            assert rt.submit("meter", Command.set("units", "dBm"), timeout=5).ok
            assert rt.instruments["meter"].channels()["power"].unit == "dBm"
            feed.drain()
            m = feed.get(timeout=5)
            assert m.unit == "dBm" and m.value == pytest.approx(-30.0, abs=0.01)
            # Range 1 holds 2.5 nW: 1 uW is OVER, reported as NaN with a status, not a crash.
            assert rt.submit("meter", Command.set("range", 1), timeout=5).ok
            feed.drain()
            m = feed.get(timeout=5)
            assert math.isnan(m.value) and m.metadata["status"] == "OVER"
            q = rt.submit("meter", Command.query("power"), timeout=5)
            assert q.ok and q.message == "OVER"
            assert rt.health()["meter"]["restarts"] == 0
        finally:
            assert rt.stop(5)


def test_meter_left_in_echo_mode_still_reads_right(pool):
    with serve_pty(
        "newport1830c", noise=0, input_power=2.5e-7, echo_on_power_up=True, speed=100
    ) as server:
        rt = _runtime(server.path, pool)
        feed = rt.distributor.subscribe(name="feed")
        rt.start()
        try:
            assert rt.wait_running(10), rt.health()
            assert feed.get(timeout=5).value == pytest.approx(2.5e-7, rel=1e-3)
            assert server.simulator.echo_enabled is False
            assert rt.submit("meter", Command.query("wavelength"), timeout=5).ok
        finally:
            assert rt.stop(5)


def test_a_set_whose_read_back_is_lost_is_reported_not_assumed(pool):
    with serve_pty("newport1830c", noise=0, speed=100) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool, rate=0)
        rt.start()
        try:
            assert rt.wait_running(10)
            sim.faults.drop_next = 1  # the W? read-back never arrives
            lost = rt.submit("meter", Command.set("wavelength", 780), timeout=5)
            assert not lost.ok and isinstance(lost.error, InstrumentTimeout)
            assert "W?" in lost.message and "'meter'" in lost.message
            sim.faults.garble_next = 1  # the read-back arrives corrupted
            garbled = rt.submit("meter", Command.set("wavelength", 790), timeout=5)
            assert not garbled.ok and isinstance(garbled.error, (ReplyError, InstrumentFault))
            # The meter itself is fine: the next set is confirmed.
            assert rt.submit("meter", Command.set("wavelength", 800), timeout=5).value == 800
        finally:
            assert rt.stop(5)


def test_polling_and_a_native_lease_share_the_port_without_interleaving(pool):
    with serve_pty("newport1830c", noise=0, input_power=1e-6, speed=100) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool, rate=100)
        feed = rt.distributor.subscribe(name="feed", maxsize=100_000)
        rt.start()
        try:
            assert rt.wait_running(10)
            native = pool.open(server.path, baudrate=9600)  # same port object as the legacy one
            replies: list[bytes] = []
            errors: list[BaseException] = []

            def native_driver():
                try:
                    for _ in range(150):
                        with native.lease("native_meter", 5.0) as lease:
                            lease.drain()
                            replies.append(lease.query(b"W?\n", b"\n", 1.0))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            t = threading.Thread(target=native_driver)
            t.start()
            t.join(60)
            assert not t.is_alive() and errors == []
            assert replies == [b"0800"] * 150
            assert wait_until(lambda: rt.health()["meter"]["polls"] >= 20, 10)
            readings = feed.drain()
            assert readings and all(r.value == pytest.approx(1e-6, rel=1e-3) for r in readings)
            assert sim.protocol_errors == []
            assert rt.health()["meter"]["restarts"] == 0
            assert pool.status()[native.name]["transactions"] >= 150 + 20
        finally:
            assert rt.stop(5)


def test_wrong_device_on_the_port_is_reported_in_health(pool):
    with serve_pty("maitai", warmed_up=True, speed=100) as server:
        rt = LegacyRuntime.from_config(
            parse_legacy_config(
                f'[runtime]\nmax_restarts = 0\n[instruments.meter]\ntype = "newport_1830c"\n'
                f'port = "{server.path}"\ntimeout_s = 0.3\n',
                source="test.toml",
            ),
            pool,
        )
        rt.start()
        try:
            assert wait_until(lambda: rt.health()["meter"]["state"] == "failed", 10)
            err = rt.health()["meter"]["last_error"]
            assert err.startswith("connect:") and "W?" in err and "'meter'" in err
        finally:
            assert rt.stop(5)


def test_unplugged_meter_restarts_and_comes_back_after_replug(pool):
    with serve_pty("newport1830c", noise=0, input_power=1e-6, speed=100) as server:
        cfg = parse_legacy_config(
            f"[runtime]\nrestart_initial_s = 0.05\nrestart_max_s = 0.2\n"
            f'[instruments.meter]\ntype = "newport_1830c"\nport = "{server.path}"\n'
            f"polling_rate_hz = 20\ntimeout_s = 0.3\n",
            source="test.toml",
        )
        rt = LegacyRuntime.from_config(cfg, pool)
        states: list[str] = []
        rt.add_listener(lambda iid, h: states.append(h["state"]))
        feed = rt.distributor.subscribe(name="feed", maxsize=10_000)
        rt.start()
        try:
            assert rt.wait_running(10)
            assert feed.get(timeout=5).value == pytest.approx(1e-6, rel=1e-3)
            server.unplug()
            assert wait_until(lambda: rt.health()["meter"]["restarts"] >= 1, 10)
            assert "restarting" in states
            assert rt.health()["meter"]["last_error"] is not None
            server.replug()
            assert wait_until(lambda: rt.health()["meter"]["state"] == "running", 15)
            feed.drain()
            assert feed.get(timeout=5).value == pytest.approx(1e-6, rel=1e-3)
        finally:
            assert rt.stop(5)


@pytest.mark.parametrize(
    ("units", "reply"),
    [
        ("W", "+.5E999"),  # the exponent overflows a float (inf)
        ("W", "9.91E37"),  # the SCPI "not a number" marker: it used to be published as watts
        ("W", "-.2501E2"),  # beyond 25 W, the top of R8 with the attenuator in
        ("dBm", "44.01"),  # 25 W is 43.98 dBm
        ("dBm", "-1E999"),
    ],
)
def test_a_reading_the_meter_cannot_give_is_a_reply_error(pool, units, reply):
    code = {"W": b"1\n", "dBm": b"2\n"}[units]
    peer = TranscriptPeer({"W?": b"0800\n", "U?": code, "D?": reply.encode() + b"\n"})
    meter = Newport1830C("meter", pool, peer.path, units=units, timeout_s=0.3)
    try:
        meter.connect()
        result = meter.handle(Command.query("power"))
        assert not result.ok and isinstance(result.error, ReplyError)
        msg = str(result.error)
        assert "'meter'" in msg and peer.path in msg and "'D?'" in msg and repr(reply) in msg
        with pytest.raises(ReplyError):
            meter.poll()  # the polled reading is refused too, never published
    finally:
        meter.disconnect()
        peer.close()


def test_readings_at_the_top_of_the_range_are_published(pool):
    peer = TranscriptPeer({"W?": b"0800\n", "U?": b"1\n", "D?": b"+.25E2\n"})
    meter = Newport1830C("meter", pool, peer.path, timeout_s=0.3)
    try:
        meter.connect()
        assert [m.value for m in meter.poll()] == [25.0]
        peer.replies.update({"U?": b"2\n", "D?": b"43.98\n"})
        assert meter.handle(Command.set("units", "dBm")).ok
        assert [m.value for m in meter.poll()] == [43.98]
    finally:
        meter.disconnect()
        peer.close()


def test_a_lost_port_is_reported_naming_the_meter(pool):
    with serve_pty("newport1830c", noise=0, speed=100) as server:
        meter = Newport1830C("meter", pool, server.path, timeout_s=0.3)
        meter.connect()
        server.unplug()
        # The poll meets the loss itself, the set the port that could not be reopened.
        with pytest.raises(PortUnavailable) as err:
            meter.poll()
        failed = meter.handle(Command.set("wavelength", 700))
        for error in (err.value, failed.error):
            assert isinstance(error, PortUnavailable) and error.instrument == "meter"
            assert "'meter'" in str(error) and server.path in str(error)
        meter.disconnect()


def test_clear_status_clears_the_meters_status_byte(pool):
    with serve_pty("newport1830c", noise=0, speed=100) as server:
        sim = server.simulator
        meter = Newport1830C("meter", pool, server.path, timeout_s=0.3)
        meter.connect()
        sim.write_from_host(b"X?\n")  # an unknown command from elsewhere: command-error bit
        assert sim.status_byte() & 2
        assert meter.handle(Command.execute("clear_status")).ok
        # The set is silent: wait for the command itself, then read the register.
        assert wait_until(lambda: sim.received_lines[-1:] == ["C"], 5), sim.received_lines
        assert sim.status_byte() == 128 and sim.protocol_errors == ["'X?': not a 1830-C command"]
        meter.disconnect()
