"""Elliptec ELL14 mounts on ophyd-async: the bus's facts (framing, encoding, identity), connect
replayed byte for byte on the real bus transport, moves checked against the simulator on a real
pty (its own state and motion records are the truth), in a real RunEngine, described with the
data keys the catalogs already hold. Several mounts share one simulated line, as in the lab;
speed factors keep motions short and every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import tty
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.protocols import Checkable, Configurable, Locatable, Movable, Readable, Stoppable
from ophyd.sim import det

from daqbridge.devices.core import call_sync
from daqbridge.devices.elliptec import (
    STATUS_CODES,
    ElliptecBus,
    ElliptecBusRouter,
    build,
    decode_position,
    encode_position,
    parse_identity,
)
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
from daqbridge.transport import BusRouter

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "elliptec.yaml"
SCALE = 143360 / 360  # pulses per degree, from that IN reply
FAST = {"reply_timeout": 0.5, "poll_interval": 0.02}


def transcript(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of the transcript shared with the simulator tests."""
    data = yaml.safe_load(TRANSCRIPTS.read_text(encoding="utf-8"))
    return [(s.encode(), None if r is None else r.encode()) for s, r, *_ in data[section]]


def on_loop(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    # call_sync, not call_in_bluesky_event_loop: ophyd-async's TimeoutError(source) crossing to
    # this thread would lose the mount's own error behind it (its words: address, port, fix).
    return call_sync(coro, timeout=timeout)


class ReplayPeer:
    """The far end of a real pty replaying (sent, reply) pairs in order, byte for byte.

    ReplayPort cannot stand in for a bus: a bus needs ``port.bus()`` and a reader thread that
    owns the input, which only the real transport has. So the real pool, bus reader and
    endpoints run here, and the replay sits on the wire: a byte that is not the next expected
    one is recorded as a mismatch; ``assert_done`` fails unless every pair was used.
    """

    def __init__(self, pairs: list[tuple[bytes, bytes | None]]) -> None:
        self.pairs = pairs
        self.used = 0
        self.mismatches: list[bytes] = []
        self._matched = 0
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="replay-peer")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for byte in data:
                if self.used >= len(self.pairs):
                    self.mismatches.append(bytes([byte]))
                    continue
                sent, reply = self.pairs[self.used]
                if sent[self._matched] != byte:
                    self.mismatches.append(bytes([byte]))
                    continue
                self._matched += 1
                if self._matched == len(sent):
                    self._matched = 0
                    self.used += 1
                    if reply is not None:
                        os.write(self.master, reply)

    def assert_done(self) -> None:
        assert self.mismatches == [], f"unexpected bytes {b''.join(self.mismatches)!r}"
        assert self.used == len(self.pairs), f"never sent: {self.pairs[self.used :]!r}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def rotators(serial_pool, RE):  # noqa: N803 - the RunEngine's loop must be running
    """``rotators(**sim_options)`` -> (server, {"a": 2, "b": 3, "c": 8} mounts named
    sim_rotators_a/b/c), connected on the RunEngine's loop."""
    made = []

    def make(*, limits=None, mount_options=None, **options):
        cm = serve_pty("elliptec", addresses="2,3,8", **{"speed": 10, **options})
        server = cm.__enter__()
        made.append((cm, None))
        bus = ElliptecBus(serial_pool.open(server.path, baudrate=9600), name="sim_rotators")
        made[-1] = (cm, bus)
        mounts = {
            label: bus.mount(
                address,
                name=f"sim_rotators_{label}",
                limits=limits,
                **{**FAST, **(mount_options or {})},
            )
            for label, address in (("a", 2), ("b", 3), ("c", 8))
        }
        on_loop(bus.connect())
        return server, mounts

    yield make
    for cm, bus in reversed(made):
        if bus is not None:
            bus.close()
        cm.__exit__(None, None, None)


async def move(mount, target: float) -> None:
    await mount.set(target)


async def finish(status) -> None:
    await status


async def finish_call(make_status) -> None:
    """A status made on the loop (AsyncStatus makes its task where it is called), awaited."""
    await make_status()


# --- framing and encoding (transcripts from INSTRUMENTS.md) ------------------------------------


def test_positions_in_twos_complement():
    assert encode_position(17920) == "00004600"  # 45 deg at 398.22 pulses/deg
    assert encode_position(35840) == "00008C00"  # 90 deg
    assert encode_position(-3982) == "FFFFF072"  # -10 deg
    assert decode_position("FFFFDA9C") == -9572
    assert decode_position("00004600") == 17920
    for bad in ("fffff072", "FFFFF07", "FFFFF07G", "0000460000"):
        with pytest.raises(ValueError):
            decode_position(bad)
    with pytest.raises(ValueError):
        encode_position(2**31)


def test_identity_payload_decodes_scale():
    ident = parse_identity("2", "0E1140051720231701016800023000")
    assert ident.model == 0x0E and ident.model_name == "ELL14"
    assert ident.serial == "11400517" and ident.year == "2023"
    assert ident.travel == 360 and ident.pulses == 143360
    assert ident.pulses_per_unit == pytest.approx(398.2222, abs=1e-4)
    for bad in (
        "0E11400517202317010168000230",
        "0E1140051720231701016800000000",
        "0E11400517YYYY1701016800023000",
    ):
        with pytest.raises(ValueError):
            parse_identity("2", bad)


def test_router_splits_packets_and_skips_junk():
    router = ElliptecBusRouter()
    assert isinstance(router, BusRouter)
    buf = bytearray(
        b"2PO00004600\r\n\r\n3GS09\r\nxx#\r\n8IN0E1140052320231701016800023000\r\n2PO0000"
    )
    packets = router.split(buf)
    assert packets == [b"2PO00004600", b"3GS09", b"8IN0E1140052320231701016800023000"]
    assert buf == bytearray(b"2PO0000")  # the incomplete packet waits for the rest
    assert router.junk == 1
    buf += b"8C00\r\n"
    assert router.split(buf) == [b"2PO00008C00"]
    assert [router.address_of(p) for p in packets] == ["2", "3", "8"]
    assert [router.kind_of(p) for p in packets] == ["PO", "GS", "IN"]


def test_router_recovers_packet_after_line_noise_and_drops_garbled_ones():
    router = ElliptecBusRouter()
    buf = bytearray(b"\x00\x7f2PO0000460\r\n\xff3GS0C\r\n2P\x1e00004600\r\n2GS0\r\n")
    assert router.split(buf) == [b"3GS0C"]  # short PO, bad kind and short GS are junk
    assert router.junk == 3
    buf = bytearray(b"z" * (ElliptecBusRouter.MAX_PENDING + 1))
    assert router.split(buf) == [] and buf == bytearray()  # no line end at all: junk, bounded


# --- connect, describe, protocols ----------------------------------------------------------------


# --- connect, replayed --------------------------------------------------------------------------


def test_connect_sends_the_transcripts_connect_section_and_stores_what_it_read(serial_pool, caplog):
    # The "connect" section of tests/transcripts/elliptec.yaml, which the simulator tests replay
    # too: INSTRUMENTS.md's real unit, a latched GS04, GV64 = 100 %, PO00004600 = 45 deg.
    peer = ReplayPeer(transcript("connect"))
    bus = ElliptecBus(serial_pool.open(peer.path, baudrate=9600), name="sim_rotators")
    try:
        mount = bus.mount(2, name="sim_rotators_a", **FAST)

        asyncio.run(asyncio.wait_for(mount.connect(), 10.0))
        peer.assert_done()  # every pair used, in order, nothing else sent
        assert mount.identity.serial == "11400517" and mount.pulses_per_degree == SCALE
        assert mount.last_status == 0x04 and "GS04" in caplog.text
        # what connect read is what the signals hold (reading them again would ask the wire)
        stored = {
            name: signal._connector.backend._reading["value"]
            for name, signal in (
                ("v", mount.velocity),
                ("sp", mount.setpoint),
                ("rb", mount.readback),
            )
        }
        assert stored == {"v": 100, "sp": 17920 / SCALE, "rb": 17920 / SCALE}
    finally:
        bus.close()
        peer.close()


def test_a_silent_address_fails_connect_naming_address_and_port(serial_pool):
    # The transcript's isolated mount: ["2gs", null]. A mount that does not answer `in` (absent,
    # isolated, hung) is a clear timeout at connect, after exactly one packet.
    assert transcript("isolate")[-1] == (b"2gs", None)
    peer = ReplayPeer([(b"2in", None)])
    bus = ElliptecBus(serial_pool.open(peer.path, baudrate=9600), name="sim_rotators")
    try:
        mount = bus.mount(2, name="sim_rotators_a", reply_timeout=0.3)
        with pytest.raises(InstrumentTimeout) as err:
            asyncio.run(asyncio.wait_for(mount.connect(), 10.0))
        message = str(err.value)
        assert "address 2" in message and peer.path in message and "Fix:" in message
        peer.assert_done()
    finally:
        bus.close()
        peer.close()


# --- against the simulator on a pty -------------------------------------------------------------


def test_a_move_ends_where_the_simulator_says(rotators):
    server, m = rotators()
    sim = server.simulator
    on_loop(move(m["a"], 33.3))
    truth = sim.position_pulses(2)
    assert not sim.is_moving(2)
    assert truth == round(33.3 * SCALE)
    reading = on_loop(m["a"].read())
    assert reading["sim_rotators_a"]["value"] == truth / SCALE
    assert reading["sim_rotators_a_setpoint"]["value"] == 33.3
    assert sim.protocol_errors == [] and sim.spacing_violations == []


def test_three_mounts_moved_together_overlap_in_time(rotators, RE, monkeypatch):  # noqa: N803
    server, m = rotators(speed=1)  # 30/60/90 deg at 300 deg/s: 0.15-0.35 s each
    sim = server.simulator
    motions: dict[str, tuple[float, float]] = {}
    plan_move = sim._move

    def record(mount, command, target_from):  # the simulator's own motion, as it starts
        plan_move(mount, command, target_from)
        motion = mount.motion
        if motion is not None:
            motions[mount.address] = (
                motion.started,
                motion.started + sim.real_delay(motion.duration),
            )

    monkeypatch.setattr(sim, "_move", record)
    RE(bps.mv(m["a"], 30, m["b"], 60, m["c"], 90))
    assert sorted(motions) == ["2", "3", "8"]
    starts, ends = zip(*motions.values(), strict=True)
    assert max(starts) < min(ends), f"the three motions never ran at one moment: {motions}"
    assert [sim.position_pulses(a) for a in (2, 3, 8)] == [round(t * SCALE) for t in (30, 60, 90)]
    assert sim.protocol_errors == [] and sim.spacing_violations == []


@pytest.mark.parametrize("angle", [1e308, -1e308, 6e6])
def test_an_angle_no_position_can_hold_is_refused_before_any_byte(rotators, angle):
    # 1e308 deg overflows to inf pulses; 6e6 deg is finite but beyond a signed 32-bit position.
    server, m = rotators()
    before = list(server.simulator.received_lines)
    with pytest.raises(ValueRejected) as err:
        m["a"].set(angle)  # synchronous: no status, no task, not even a position query
    message = str(err.value)
    assert "'sim_rotators_a'" in message and "address 2" in message and server.path in message
    assert f"{angle!r}" in message
    assert server.simulator.received_lines == before


def test_the_descriptor_is_the_one_the_catalogs_hold(rotators):
    # Key for key what the v1 mounts recorded (ADR 0007): a catalog cannot tell them apart.
    server, m = rotators(limits=(-90, 90))
    source = f"sim_rotators_a (ELL14 address 2) on {server.path}"
    described = on_loop(m["a"].describe())
    assert set(described) == {"sim_rotators_a", "sim_rotators_a_setpoint"}
    for key, command in (("sim_rotators_a", "gp"), ("sim_rotators_a_setpoint", "ma")):
        assert described[key]["source"] == f"{source}: {command}"
        assert described[key]["units"] == "deg" and described[key]["precision"] == 3
        assert described[key]["dtype"] == "number" and described[key]["shape"] == []
        assert described[key]["limits"]["control"] == {"low": -90.0, "high": 90.0}
        assert "dtype_numpy" not in described[key]
    config = on_loop(m["a"].describe_configuration())
    assert set(config) == {"sim_rotators_a_velocity"}
    assert config["sim_rotators_a_velocity"]["source"] == f"{source}: gv/sv"
    assert config["sim_rotators_a_velocity"]["units"] == "%"
    assert m["a"].hints == {"fields": ["sim_rotators_a"]}
    assert on_loop(m["a"].read_configuration())["sim_rotators_a_velocity"]["value"] == 100
    for protocol in (Movable, Stoppable, Readable, Configurable, Locatable, Checkable):
        assert isinstance(m["a"], protocol)


def test_a_scan_in_a_real_run_engine(rotators, RE, docs):  # noqa: N803
    server, m = rotators()
    RE(bp.scan([det], m["a"], 0, 90, 3))
    docs.validate()
    events = docs.events()
    assert [e["data"]["sim_rotators_a_setpoint"] for e in events] == [0.0, 45.0, 90.0]
    assert [round(e["data"]["sim_rotators_a"], 3) for e in events] == [0.0, 45.0, 90.0]
    descriptor = docs.of("descriptor")[0]
    assert descriptor["data_keys"]["sim_rotators_a"]["units"] == "deg"
    assert descriptor["configuration"]["sim_rotators_a"]["data"]["sim_rotators_a_velocity"] == 100
    assert server.simulator.position_deg(2) == pytest.approx(90.0, abs=1 / SCALE)
    assert server.simulator.spacing_violations == []


def test_an_out_of_range_move_is_the_mounts_gs0c_then_the_next_move_works(rotators):
    server, m = rotators()
    with pytest.raises(InstrumentFault, match="GS0C out of range") as err:
        on_loop(move(m["a"], 400))
    assert err.value.code == 0x0C and "2st" not in server.simulator.received_lines
    on_loop(move(m["a"], 15))
    assert server.simulator.position_deg(2) == pytest.approx(15, abs=1 / SCALE)


def test_moves_to_one_mount_are_spaced_and_a_finished_run_sends_no_st(rotators, RE):  # noqa: N803
    server, m = rotators(speed=1)  # device time = real time: a move within 100 ms goes to 0
    sim = server.simulator
    RE(bp.list_scan([], m["a"], [1, 2, 3, 4]))
    assert sim.spacing_violations == []
    assert sim.position_pulses(2) == round(4 * SCALE)
    assert "2st" not in sim.received_lines  # the RunEngine's stop(success=True) of an idle mount


def test_stop_during_a_move_sends_st_and_fails_the_move(rotators, wait_until):
    # 300 deg at 150 deg/s: 2 s, stopped long before; at half speed the mount's 100 ms between
    # moves are 200 ms of real time
    server, m = rotators(speed=0.5, mount_options={"move_spacing": 0.25})
    sim = server.simulator

    async def start():
        return m["a"].set(300)

    status = on_loop(start())
    assert wait_until(lambda: sim.is_moving(2))
    on_loop(m["a"].stop())
    with pytest.raises(RuntimeError, match="was stopped"):
        on_loop(finish(status))
    assert wait_until(lambda: "2st" in sim.received_lines)  # on the wire; the far end reads it
    assert wait_until(lambda: not sim.is_moving(2))
    here = sim.position_pulses(2)
    assert 0 < here < round(300 * SCALE)
    assert on_loop(m["a"].read())["sim_rotators_a"]["value"] == here / SCALE
    on_loop(move(m["a"], 10))  # the stop's PO left in the inbox does not end this move
    assert sim.position_pulses(2) == round(10 * SCALE)


def test_a_late_po_lands_only_in_its_own_mounts_inbox(rotators):
    server, m = rotators(speed=2)  # 300 deg: ~0.5 s, with the other mounts busy meanwhile
    sim = server.simulator

    async def traffic():
        moving = m["a"].set(300)
        readings = 0
        while not moving.done:
            await m["b"].read()
            await m["c"].velocity.set(50 + readings % 40)
            readings += 1
        await moving
        return readings

    assert on_loop(traffic()) > 3
    assert sim.position_pulses(2) == round(300 * SCALE) and sim.position_pulses(3) == 0
    stats = m["a"].bus.serial_bus.stats()
    assert stats["unknown_addresses"] == {}
    for address in ("3", "8"):
        assert stats["endpoints"][address]["unsolicited"] == {}  # nothing of mount 2's here
    assert sim.protocol_errors == []


def test_a_mechanical_timeout_is_reported_by_name_then_the_next_move_works(rotators):
    server, m = rotators()
    server.simulator.stall(3)  # the next move stops halfway and ends with GS02
    with pytest.raises(InstrumentFault, match="GS02 mechanical timeout") as err:
        on_loop(move(m["b"], 90))
    assert err.value.code == 0x02 and "address 3" in str(err.value)
    on_loop(move(m["b"], 5))
    assert server.simulator.position_pulses(3) == round(5 * SCALE)


def test_home_goes_to_zero_with_ho(rotators):
    server, m = rotators()
    on_loop(move(m["a"], -45))
    on_loop(finish_call(m["a"].home))
    assert "2ho0" in server.simulator.received_lines
    assert server.simulator.position_pulses(2) == 0
    assert on_loop(m["a"].read())["sim_rotators_a"]["value"] == 0.0


def test_velocity_is_set_with_sv_and_read_back_with_gv(rotators, RE):  # noqa: N803
    server, m = rotators()
    sim = server.simulator
    RE(bps.mv(m["a"].velocity, 40))
    assert sim.received_lines[-2:] == ["2sv28", "2gv"]
    assert on_loop(m["a"].read_configuration())["sim_rotators_a_velocity"]["value"] == 40
    before = list(sim.received_lines)
    for bad in (0, 101, 50.5, "fast"):
        with pytest.raises(ValueRejected):
            on_loop(finish_call(lambda bad=bad: m["a"].velocity.set(bad)))
    assert sim.received_lines == before


def test_a_lost_port_is_reported_naming_the_mount(rotators, wait_until):
    server, m = rotators()
    server.unplug()
    assert wait_until(lambda: m["a"].bus.serial_bus.stats()["lost"])  # the reader saw it go
    with pytest.raises(PortUnavailable) as err:
        on_loop(m["a"].read())
    message = str(err.value)
    assert err.value.instrument == "sim_rotators_a" and "address 2" in message
    assert server.path in message


# --- maintenance commands (issue 14), pinned to tests/transcripts/elliptec.yaml ----------------

MAINTENANCE = yaml.safe_load(TRANSCRIPTS.read_text(encoding="utf-8"))


def _replies() -> list[str]:
    at_rest = [r for _, r in MAINTENANCE["at_rest"] + MAINTENANCE["isolate"] if r]
    long_runs = [r for _, busy, done in MAINTENANCE["long_runs"] for r in (busy, done)]
    return at_rest + long_runs


@pytest.mark.parametrize("reply", _replies())
def test_router_frames_every_maintenance_reply_of_the_transcript(reply):
    router = ElliptecBusRouter()
    buffer = bytearray(reply.encode())
    (packet,) = router.split(buffer)
    assert packet == reply.encode().rstrip(b"\r\n")
    assert router.address_of(packet) == reply[0]
    assert router.kind_of(packet) == reply[1:3]
    assert router.junk == 0 and buffer == bytearray()


def test_router_frames_a_current_curve_that_arrives_in_pieces():
    # c1/c2 reply 87 samples of 12 characters: 1047 bytes before the CR LF, arriving at 9600
    # baud in small reads. It must not be thrown away as a line without an end.
    curve = b"2C1" + b"7A0058030000" * 87 + b"\r\n"
    router = ElliptecBusRouter()
    buffer = bytearray()
    packets = []
    for i in range(0, len(curve), 64):
        buffer += curve[i : i + 64]
        packets += router.split(buffer)
    assert packets == [curve[:-2]]
    assert router.kind_of(packets[0]) == "C1" and router.junk == 0


def test_a_long_optimize_on_one_address_does_not_disturb_a_move_on_another(rotators):
    server, m = rotators(speed=60)
    optimizing = m["b"].endpoint  # address 3
    optimizing.send(b"3om")
    # The mount at 3 now sends GS09 unprompted; wait for one to be sure the run is under way.
    assert optimizing.wait_for("GS", timeout=5.0) == b"3GS09"
    on_loop(move(m["a"], 45.0))
    assert server.simulator.position_deg(2) == pytest.approx(45.0, abs=0.1)
    assert b"2GS09" not in m["a"].endpoint.pending()
    # The run ends with GS00 on its own address; then mount 3 moves as usual.
    deadline = time.monotonic() + 10.0
    while optimizing.wait_for("GS", timeout=max(0.0, deadline - time.monotonic())) != b"3GS00":
        pass
    on_loop(move(m["b"], -10.0))
    assert server.simulator.position_deg(3) == pytest.approx(-10.0, abs=0.1)
    assert server.simulator.protocol_errors == []


# --- ported from the v1 mount's tests: the same behaviours on the ophyd-async bus ----------------


def test_duplicate_and_bad_addresses_and_limits_are_refused(rotators):
    server, m = rotators()
    bus = m["a"].bus
    with pytest.raises(ConfigError, match="already has a mount"):
        bus.mount("2", name="again")
    for bad in ("G", "12", -1, 16, None, 2.0):
        with pytest.raises(ConfigError):
            bus.mount(bad, name="bad")
    with pytest.raises(ConfigError, match="SharedSerialPort"):
        ElliptecBus("not a port", name="x")
    with pytest.raises(ConfigError, match="limits"):
        bus.mount("5", name="x", limits=(10, -10))


def test_model_other_than_ell14_is_an_identity_mismatch(serial_pool, RE):  # noqa: N803
    # A real pty whose far end is an ELL6 shutter at address 2 (model byte 06).
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            try:
                r, _, _ = select.select([master], [], [], 0.05)
                if r and b"2in" in os.read(master, 1024):
                    os.write(master, b"2IN0611400999202317010001" + b"0000001F\r\n")
            except OSError:
                return

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    bus = ElliptecBus(serial_pool.open(path, baudrate=9600), name="ell")
    try:
        shutter = bus.mount(2, name="shutter", **FAST)
        with pytest.raises(IdentityMismatch) as err:
            on_loop(shutter.connect())
        assert "ELL6" in str(err.value) and "ELL14" in str(err.value)
        assert path in str(err.value)
    finally:
        bus.close()
        stop.set()
        t.join(2)
        os.close(master)
        os.close(slave)


def test_readback_moves_while_moving(rotators):
    server, m = rotators(speed=1)  # 180 deg at 300 deg/s: ~0.65 s

    async def watch():
        seen = []
        moving = m["a"].set(180)
        while not moving.done:
            seen.append((await m["a"].read())["sim_rotators_a"]["value"])
        await moving
        return seen

    seen = on_loop(watch())
    assert len({round(v, 1) for v in seen if 1 < v < 179}) >= 2, seen
    assert server.simulator.position_deg(2) == pytest.approx(180, abs=0.01)


def test_soft_limits_are_checked_before_sending(rotators):
    server, m = rotators(limits=(-90, 90))
    sent = len(server.simulator.received_lines)
    with pytest.raises(ValueRejected, match="90"):
        m["a"].set(100)
    for bad in ("10\r\n2ma00000000", float("inf"), None, True):
        with pytest.raises(ValueRejected):
            m["a"].set(bad)
    assert len(server.simulator.received_lines) == sent
    assert m["a"].limits == (-90.0, 90.0)
    assert STATUS_CODES[0x0C] == "out of range"


def test_refresh_reads_a_velocity_set_behind_the_drivers_back(rotators):
    server, m = rotators()
    sim = server.simulator
    with sim.lock:  # another program on the bus, not this driver
        sim._mount(2).velocity_pct = 35
    before = len(sim.received_lines)
    on_loop(m["a"].refresh_configuration())
    assert sim.received_lines[before:] == ["2gv"]  # a query only: nothing set
    config = on_loop(m["a"].read_configuration())
    assert config["sim_rotators_a_velocity"]["value"] == 35


@pytest.mark.parametrize(
    ("fault", "error"), [("garble_next", ReplyError), ("drop_next", InstrumentTimeout)]
)
def test_refresh_with_a_bad_reply_names_the_mount(rotators, fault, error):
    server, m = rotators(seed=7)
    setattr(server.simulator.faults, fault, 1)
    with pytest.raises(error) as err:
        on_loop(m["a"].refresh_configuration())
    assert "address 2" in str(err.value) and server.path in str(err.value)
    on_loop(m["a"].refresh_configuration())  # the next one reads again
    assert on_loop(m["a"].read_configuration())["sim_rotators_a_velocity"]["value"] == 100


def test_abort_during_move_sends_st(rotators, RE, wait_until):  # noqa: N803
    server, m = rotators(speed=0.5, mount_options={"move_spacing": 0.25})  # 300 deg: ~2 s
    sim = server.simulator

    def plan():
        yield from bps.abs_set(m["a"], 300, group="rot")
        yield from bps.sleep(0.3)
        raise RuntimeError("operator abort")

    with pytest.raises(RuntimeError, match="operator abort"):
        RE(plan())
    assert wait_until(lambda: "2st" in sim.received_lines)
    assert wait_until(lambda: not sim.is_moving(2))
    assert 1 < sim.position_deg(2) < 299
    on_loop(move(m["a"], 10))  # the next move works and is not confused by the stop's PO
    assert sim.position_deg(2) == pytest.approx(10, abs=0.01)


def test_dropped_reply_during_a_move_fails_clearly_then_next_move_works(rotators):
    server, m = rotators()
    server.simulator.faults.drop_next = 1
    with pytest.raises((ReplyError, InstrumentTimeout)) as err:  # the reply to gs or gp
        on_loop(move(m["a"], 30))
    assert "address 2" in str(err.value) and server.path in str(err.value)
    on_loop(move(m["a"], 35))
    assert server.simulator.position_deg(2) == pytest.approx(35, abs=0.01)


def test_garbled_replies_fail_clearly_then_next_move_works(rotators):
    server, m = rotators(seed=7)
    for target in (30, 60, 90):
        server.simulator.faults.garble_next = 1
        with pytest.raises((ReplyError, InstrumentFault, InstrumentTimeout)) as err:
            on_loop(move(m["a"], target))
        assert "address 2" in str(err.value)
        on_loop(move(m["a"], target + 5))
        assert server.simulator.position_deg(2) == pytest.approx(target + 5, abs=0.01)


def test_a_late_po_does_not_end_the_next_move(rotators, wait_until):
    # A PO of an earlier exchange (the reply to a poll that timed out, a stop's report) that
    # comes in while the mount moves must not be taken for the end of this move.
    server, m = rotators(speed=0.5)  # 90 deg at 150 deg/s: ~0.7 s
    sim = server.simulator

    async def start():
        return m["a"].set(90)

    status = on_loop(start())
    assert wait_until(lambda: sim.is_moving(2))
    sim.emit_unsolicited(b"2PO00001000\r\n")  # 10.3 deg: where the mount was long ago
    on_loop(finish(status))
    assert sim.position_deg(2) == pytest.approx(90, abs=0.01)
    assert on_loop(m["a"].read())["sim_rotators_a"]["value"] == pytest.approx(90, abs=0.01)


def test_dropped_reply_to_a_query_times_out_clearly(rotators):
    server, m = rotators()
    server.simulator.faults.drop_next = 1
    with pytest.raises(InstrumentTimeout, match="gp"):
        on_loop(m["a"].read())
    on_loop(m["a"].read())


def test_sim_url_bus_in_a_grid_scan(serial_pool, RE, docs):  # noqa: N803
    name = f"ell-{uuid.uuid4().hex[:8]}"
    bus = ElliptecBus.from_url(
        f"sim://elliptec?name={name}&addresses=2,3&speed=10", pool=serial_pool
    )
    try:
        a = bus.mount("2", name="hwp", **FAST)
        b = bus.mount(3, name="qwp", **FAST)
        on_loop(bus.connect())
        assert sorted(on_loop(bus.detect(range(6), timeout=0.1))) == ["2", "3"]
        RE(bp.grid_scan([], a, 0, 20, 3, b, -10, 10, 3))
        docs.validate()
        assert len(docs.events()) == 9
        assert on_loop(b.read())["qwp"]["value"] == pytest.approx(10, abs=0.01)
        assert bus.stats()["junk"] == 0
    finally:
        bus.close()
        unregister(name)


def test_a_closed_mount_refuses_every_exchange(rotators):
    server, m = rotators()
    m["a"].bus.close()
    with pytest.raises(InstrumentError, match="closed"):
        on_loop(m["a"].read())


# --- the driver's declaration -------------------------------------------------------------------


def test_build_gives_each_address_its_limits_name_and_the_entrys_timeout(serial_pool):
    from daqbridge.devices import registered_drivers
    from daqbridge.devices.elliptec import ElliptecSettings

    spec = registered_drivers()["elliptec"]
    assert spec.settings is ElliptecSettings and spec.build is build
    assert spec.simulator == "elliptec" and spec.legacy_twin == "elliptec"
    settings = ElliptecSettings.model_validate(
        {
            "addresses": [
                {"address": "2", "name": "a", "low_limit": -90.0, "high_limit": 90.0},
                {"address": 8, "low_limit": 10.0},
            ]
        }
    )
    name = f"ell-{uuid.uuid4().hex[:8]}"
    port = serial_pool.open(f"sim://elliptec?name={name}&addresses=2,8", baudrate=9600)
    try:
        bus = build(port, name="rot", settings=settings, timeout=2.5)
        parts = spec.parts(bus)
        assert sorted(parts) == ["rot_8", "rot_a"]
        assert parts["rot_a"].limits == (-90.0, 90.0) and parts["rot_8"].limits == (10.0, 360.0)
        assert {mount.reply_timeout for mount in parts.values()} == {2.5}
        assert parts["rot_a"] is bus.mounts["2"]
    finally:
        unregister(name)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"address": "2", "low_limit": 400.0}, "leaves no angle"),
        ({"address": "2", "low_limit": 10.0, "high_limit": -10.0}, "is not below"),
        ({"address": "G"}, "not one hex digit"),
        ({"address": 16}, "outside 0-15"),
        ({"address": "2", "name": "a b"}, "cannot be part of a device id"),
    ],
)
def test_the_settings_model_refuses_what_the_mounts_would(entry, words):
    import pydantic

    from daqbridge.devices.elliptec import ElliptecSettings

    with pytest.raises(pydantic.ValidationError, match=words):
        ElliptecSettings.model_validate({"addresses": [entry]})


def test_the_mounts_end_of_move_report_wakes_the_poll(rotators):
    """Polls 7.5 s apart: the move still ends within a second, because the ``PO`` the mount
    sends as its motion ends wakes the poll, and ``gs`` confirms it (bounded: a missed wake-up
    fails the call's 5 s timeout instead of waiting out the interval)."""
    server, m = rotators(mount_options={"poll_interval": 30.0})
    sim = server.simulator
    on_loop(move(m["a"], 90), timeout=5.0)
    assert not sim.is_moving(2)
    assert sim.position_deg(2) == pytest.approx(90, abs=0.01)
    assert on_loop(m["a"].read())["sim_rotators_a"]["value"] == pytest.approx(90, abs=0.01)
