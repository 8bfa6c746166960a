"""Legacy Elliptec bus driver against the bus simulator on a real pty, through the port's bus."""

from __future__ import annotations

import threading
import time

import pytest

from daqbridge.errors import ConfigError, InstrumentFault, PortUnavailable
from daqbridge.legacy import Command, ElliptecRouter, LegacyRuntime, parse_legacy_config
from daqbridge.legacy._elliptec import ElliptecBus, decode_position, encode_position, parse_info
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool
from tests.legacy.legacy_test_instruments import wait_until

SPEED = 20.0  # simulated motion 20x faster than real


@pytest.fixture
def pool():
    with SerialPortPool() as p:
        yield p


def _runtime(path: str, pool: SerialPortPool, rate: float = 10, extra: str = "") -> LegacyRuntime:
    cfg = parse_legacy_config(
        f"""
[instruments.mounts]
type = "elliptec"
port = "{path}"
device_addresses = [2, 3]
polling_rate_hz = {rate}
command_spacing_s = 0.02
move_timeout_s = 10
{extra}
""",
        source="test.toml",
    )
    return LegacyRuntime.from_config(cfg, pool)


def test_wire_encodings_match_the_reference_transcripts():
    assert encode_position(round(90 * 143360 / 360)) == "00008C00"
    assert encode_position(round(45 * 143360 / 360)) == "00004600"
    assert encode_position(round(-10 * 143360 / 360)) == "FFFFF072"
    assert decode_position("FFFFDA9C") == -9572
    info = parse_info("0E1140051720231701016800023000")
    assert (info.model, info.travel_deg, info.pulses_per_travel) == (0x0E, 360, 143360)
    assert info.pulses_per_deg == pytest.approx(398.2222, abs=1e-4)
    with pytest.raises(ValueError):
        parse_info("0E11400517")


def test_router_frames_replies_and_skips_noise():
    r = ElliptecRouter()
    buf = bytearray(b"2PO00004600\r\n\r\n3GS00\r\n2gs\r\n#@!\r\n2PO0000")
    packets = r.split(buf)
    assert packets == [b"2PO00004600", b"3GS00"]
    assert bytes(buf) == b"2PO0000"  # incomplete packet left in place
    assert r.junk == 2  # the echoed host packet and the noise
    assert (r.address_of(packets[1]), r.kind_of(packets[1])) == ("3", "GS")


def test_positions_moves_home_and_queries(pool):
    with serve_pty("elliptec", addresses=[2, 3], speed=SPEED) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool)
        feed = rt.distributor.subscribe(name="feed", maxsize=10_000)
        rt.start()
        try:
            assert rt.wait_running(10), rt.health()
            first = {feed.get(timeout=5).channel, feed.get(timeout=5).channel}
            assert first == {"position_2", "position_3"}

            moved = rt.submit("mounts", Command.set("position_2", 45.0), timeout=15)
            assert moved.ok, moved.message
            assert moved.value == pytest.approx(45.0, abs=0.01)
            assert any(line.startswith("2ma00004600") for line in sim.received_lines)
            q = rt.submit("mounts", Command.query("position_2"), timeout=5)
            assert q.value == pytest.approx(45.0, abs=0.01)
            assert rt.submit("mounts", Command.set("position_3", -10), timeout=15).value == (
                pytest.approx(-10.0, abs=0.01)
            )
            home = rt.submit("mounts", Command.execute("home_2"), timeout=15)
            assert home.ok and home.value == pytest.approx(0.0, abs=0.01)
            status = rt.submit("mounts", Command.query("status_3"), timeout=5)
            assert status.ok and status.value == 0 and status.message == "ok"
            info = rt.submit("mounts", Command.query("info_2"), timeout=5).value
            assert info["travel_deg"] == 360 and info["pulses_per_deg"] == pytest.approx(
                398.2222, abs=1e-3
            )

            feed.drain()
            assert wait_until(lambda: feed.qsize() >= 4, 5)
            latest = {m.channel: m.value for m in feed.drain()}
            assert latest["position_2"] == pytest.approx(0.0, abs=0.01)
            assert latest["position_3"] == pytest.approx(-10.0, abs=0.01)

            refused = rt.submit("mounts", Command.set("position_2", 400), timeout=5)
            assert not refused.ok and "outside" in refused.message
            wrong = rt.submit("mounts", Command.set("position_7", 1), timeout=5)
            assert not wrong.ok and "position_7" in wrong.message
            assert sim.protocol_errors == [] and sim.spacing_violations == []
            assert rt.health()["mounts"]["restarts"] == 0
        finally:
            assert rt.stop(5)


def test_halt_stops_a_long_move(pool):
    with serve_pty("elliptec", addresses=[2, 3], speed=1.0) as server:
        rt = _runtime(server.path, pool, rate=5)
        rt.start()
        try:
            assert rt.wait_running(10)
            # 350 deg at 300 deg/s takes > 1 s of real time at speed 1.
            fut = rt.submit_future("mounts", Command.set("position_2", 350.0))
            time.sleep(0.3)
            assert rt.halt("mounts", timeout=5).ok
            result = fut.result(10)
            assert not result.ok and isinstance(result.error, InstrumentFault)
            assert "stopped at" in result.message
            stopped_at = rt.submit("mounts", Command.query("position_2"), timeout=5).value
            assert 1.0 < stopped_at < 349.0
        finally:
            assert rt.stop(5)


def test_late_packets_of_another_users_move_do_not_confuse_polling(pool):
    """A second user of the bus (a native driver) moves mount 3 and polls its status while the
    legacy driver polls both mounts; every packet reaches its own transaction."""
    with serve_pty("elliptec", addresses=[2, 3], speed=SPEED) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool, rate=20, extra="")
        feed = rt.distributor.subscribe(name="feed", maxsize=100_000, channels=["position_2"])
        rt.start()
        try:
            assert rt.wait_running(10)
            assert rt.submit("mounts", Command.set("position_2", 90.0), timeout=15).ok
            shared = pool.open(server.path, baudrate=9600)
            bus = shared.bus(ElliptecRouter())
            mount3 = bus.endpoint("3")
            statuses: list[bytes] = []
            errors: list[BaseException] = []

            def native_driver():
                try:
                    for i in range(6):
                        target = encode_position(round((30 + 20 * i) * 398.2222))
                        time.sleep(0.12)  # the mount needs ~100 ms between moves
                        mount3.send(f"3ma{target}".encode(), owner="native_rotator")
                        for _ in range(5):
                            statuses.append(mount3.transact(b"3gs", "GS", 1.0, "native_rotator"))
                        mount3.wait_for("PO", 5.0)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            t = threading.Thread(target=native_driver)
            t.start()
            t.join(60)
            assert not t.is_alive() and errors == []
            assert all(s[:3] == b"3GS" for s in statuses) and len(statuses) == 30
            feed.drain()
            assert wait_until(lambda: feed.qsize() >= 3, 5)
            # Mount 2 never saw mount 3's packets: it stayed at 90 deg throughout.
            assert all(m.value == pytest.approx(90.0, abs=0.01) for m in feed.drain())
            assert sim.protocol_errors == []
            assert rt.health()["mounts"]["restarts"] == 0
        finally:
            assert rt.stop(5)


def test_absent_mount_fails_connect_with_its_address(pool):
    with serve_pty("elliptec", addresses=[2], speed=SPEED) as server:
        cfg = parse_legacy_config(
            f'[runtime]\nmax_restarts = 0\n[instruments.mounts]\ntype = "elliptec"\n'
            f'port = "{server.path}"\ndevice_addresses = [2, 5]\ntimeout_s = 0.3\n',
            source="test.toml",
        )
        rt = LegacyRuntime.from_config(cfg, pool)
        rt.start()
        try:
            assert wait_until(lambda: rt.health()["mounts"]["state"] == "failed", 10)
            assert "address 5" in rt.health()["mounts"]["last_error"]
        finally:
            assert rt.stop(5)


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        ("", "instruments.m.device_addresses", "device_addresses = [2, 3]"),
        ("device_addresses = [16]", "instruments.m.device_addresses", "0-15"),
        ("device_addresses = [2, '2']", "instruments.m.device_addresses", "twice"),
        ("device_addresses = []", "instruments.m.device_addresses", "device_addresses"),
    ],
)
def test_elliptec_config_errors(keys, key, words):
    with pytest.raises(ConfigError) as info:
        parse_legacy_config(
            f"[instruments.m]\ntype = 'elliptec'\nport = '/dev/x'\n{keys}\n", source="lab.toml"
        )
    assert info.value.key == key and words in str(info.value)


def test_a_stalled_move_comes_back_as_the_mounts_fault(pool):
    with serve_pty("elliptec", addresses=[2, 3], speed=SPEED) as server:
        sim = server.simulator
        rt = _runtime(server.path, pool, rate=5)
        rt.start()
        try:
            assert rt.wait_running(10)
            sim.stall(2)
            result = rt.submit("mounts", Command.set("position_2", 120.0), timeout=15)
            assert not result.ok and isinstance(result.error, InstrumentFault)
            assert result.error.code == 0x02 and "mechanical timeout" in result.message
            # Not a crash: the instrument keeps running and the next move works.
            assert rt.submit("mounts", Command.set("position_2", 30.0), timeout=15).ok
            assert sim.position_deg(2) == pytest.approx(30.0, abs=0.01)
            assert rt.health()["mounts"]["restarts"] == 0
        finally:
            assert rt.stop(5)


def test_a_lost_port_is_reported_naming_the_instrument(pool):
    with serve_pty("elliptec", addresses=[2], speed=SPEED) as server:
        mounts = ElliptecBus("mounts", pool, server.path, device_addresses=[2], timeout_s=0.3)
        mounts.connect()
        server.unplug()
        lost = pool.open(server.path, baudrate=9600).bus(ElliptecRouter())
        assert wait_until(lambda: lost.stats()["lost"], 5)  # the bus reader saw the cable go
        with pytest.raises(PortUnavailable) as err:
            mounts.poll()
        moved = mounts.handle(Command.set("position_2", 10.0))
        for error in (err.value, moved.error):
            assert isinstance(error, PortUnavailable) and error.instrument == "mounts"
            assert "'mounts'" in str(error) and server.path in str(error)
        mounts.disconnect()


def test_a_late_po_does_not_end_a_move(pool):
    # A PO of an earlier exchange (a reply that came after its timeout, a stop's report) that
    # comes in while the mount moves must not be taken for the end of this move.
    with serve_pty("elliptec", addresses=[2], speed=0.5) as server:  # 90 deg: ~0.7 s
        sim = server.simulator
        mounts = ElliptecBus("mounts", pool, server.path, device_addresses=[2], timeout_s=0.5)
        mounts.connect()
        try:
            done: list = []
            mover = threading.Thread(
                target=lambda: done.append(mounts.handle(Command.set("position_2", 90.0)))
            )
            mover.start()
            assert wait_until(lambda: sim.is_moving(2), 5)
            sim.emit_unsolicited(b"2PO00001000\r\n")  # 10.3 deg: where the mount was long ago
            mover.join(10)
            assert not mover.is_alive() and done
            assert done[0].ok, done[0].message
            assert done[0].value == pytest.approx(90.0, abs=0.01)
            assert sim.position_deg(2) == pytest.approx(90.0, abs=0.01)
        finally:
            mounts.disconnect()
