"""Elliptec ELL14 on ophyd-async: connect replayed byte for byte on the real bus transport,
moves checked against the simulator on a real pty (its own state and motion records are the
truth), in a real RunEngine, and described exactly as the v1 mount on the same bus."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import tty
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
import yaml
from bluesky.protocols import Checkable, Configurable, Locatable, Movable, Readable, Stoppable
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd.sim import det

from daqbridge.devices.elliptec import ElliptecBus
from daqbridge.devices.elliptec_async import ElliptecBusAsync
from daqbridge.errors import InstrumentFault, InstrumentTimeout, PortUnavailable, ValueRejected
from daqbridge.sim import serve_pty

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts" / "elliptec.yaml"
SCALE = 143360 / 360  # pulses per degree, from that IN reply
FAST = {"reply_timeout": 0.5, "poll_interval": 0.02}


def transcript(section: str) -> list[tuple[bytes, bytes | None]]:
    """(sent, reply) pairs of one section of the transcript shared with the simulator tests."""
    data = yaml.safe_load(TRANSCRIPTS.read_text(encoding="utf-8"))
    return [(s.encode(), None if r is None else r.encode()) for s, r, *_ in data[section]]


def on_loop(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run on the RunEngine's event loop (the devices live there), bounded."""
    return call_in_bluesky_event_loop(coro, timeout=timeout)


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
        bus = ElliptecBusAsync(serial_pool.open(server.path, baudrate=9600), name="sim_rotators")
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


# --- connect, replayed --------------------------------------------------------------------------


def test_connect_sends_the_transcripts_connect_section_and_stores_what_it_read(serial_pool, caplog):
    # The "connect" section of tests/transcripts/elliptec.yaml, which the simulator tests replay
    # too: INSTRUMENTS.md's real unit, a latched GS04, GV64 = 100 %, PO00004600 = 45 deg.
    peer = ReplayPeer(transcript("connect"))
    bus = ElliptecBusAsync(serial_pool.open(peer.path, baudrate=9600), name="sim_rotators")
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
    bus = ElliptecBusAsync(serial_pool.open(peer.path, baudrate=9600), name="sim_rotators")
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


def test_the_descriptor_is_the_v1_mounts_on_the_same_bus(rotators):
    server, m = rotators(limits=(-90, 90))
    v1_bus = ElliptecBus(m["a"].port, name="v1")  # the same SerialBus: one reader, one inbox
    v1 = v1_bus.mount(2, name="sim_rotators_a", limits=(-90, 90), **FAST)
    try:
        v1_bus.connect()
        assert on_loop(m["a"].describe()) == dict(v1.describe())
        assert on_loop(m["a"].describe_configuration()) == dict(v1.describe_configuration())
        assert m["a"].hints == v1.hints
        config = on_loop(m["a"].read_configuration())
        assert {k: v["value"] for k, v in config.items()} == {
            k: v["value"] for k, v in v1.read_configuration().items()
        }
    finally:
        v1_bus.close()
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
