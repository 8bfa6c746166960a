"""ElliptecBus / ElliptecMount against the Elliptec bus simulator over real ptys and sim:// URLs.

Several mounts share one simulated line, as in the lab; speed factors keep motions short and
every wait is bounded.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
import tty
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
    Stoppable,
    Triggerable,
)
from bluesky.utils import FailedStatus

from daqbridge.devices.elliptec import (
    STATUS_CODES,
    ElliptecBus,
    ElliptecBusRouter,
    ElliptecMount,
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
from daqbridge.transport import BusRouter, SerialPortPool

FAST = {"reply_timeout": 0.5, "poll_interval": 0.02}


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
def RE():
    return RunEngine({}, context_managers=[])


@pytest.fixture
def bus_on_pty(pool):
    """(server, bus, mounts by address) with mounts connected; closed afterwards."""
    made = []

    def make(addresses="2,3,8", mounts=("2", "3", "8"), mount_options=None, **sim_options):
        cm = serve_pty("elliptec", addresses=addresses, **{"speed": 10, **sim_options})
        server = cm.__enter__()
        made.append((cm, None))
        bus = ElliptecBus.from_url(server.path, pool=pool, name="ell")
        made[-1] = (cm, bus)
        devices = {
            a: bus.mount(a, name=f"m{a}", **{**FAST, **(mount_options or {})}) for a in mounts
        }
        bus.connect(timeout=10)
        return server, bus, devices

    yield make
    for cm, bus in reversed(made):
        if bus is not None:
            bus.close()
        cm.__exit__(None, None, None)


def collect(RE):
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def validate(docs):
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)


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


def test_connect_identifies_each_mount_and_describes_degrees(bus_on_pty):
    server, bus, m = bus_on_pty()
    assert m["2"].identity.serial == "11400517"
    assert m["3"].identity.serial == "11400518"
    assert m["2"].pulses_per_degree == pytest.approx(143360 / 360)
    desc = m["2"].describe()
    assert desc["m2"]["units"] == "deg" and desc["m2_setpoint"]["units"] == "deg"
    assert server.path in desc["m2"]["source"] and "address 2" in desc["m2"]["source"]
    assert m["2"].describe_configuration()["m2_velocity"]["units"] == "%"
    assert m["2"].read_configuration()["m2_velocity"]["value"] == 100
    for proto in (Readable, Movable, Stoppable, Triggerable, Configurable, Locatable):
        assert isinstance(m["2"], proto), proto
    assert m["2"].egu == "deg" and m["2"].position == pytest.approx(0.0)
    assert m["2"].hints == {"fields": ["m2"]}


def test_absent_address_is_a_clear_timeout_at_connect(pool):
    with serve_pty("elliptec", addresses="2,3", speed=10) as server:
        bus = ElliptecBus.from_url(server.path, pool=pool)
        try:
            absent = bus.mount(5, name="absent", reply_timeout=0.3)
            t0 = time.monotonic()
            with pytest.raises(InstrumentTimeout) as err:
                absent.connect()
            assert time.monotonic() - t0 < 5
            text = str(err.value)
            assert "address 5" in text and server.path in text and "Fix:" in text
            with pytest.raises(InstrumentError, match="not connected"):
                absent.set(10)
            present = bus.mount(2, name="present", **FAST)
            present.connect()  # the bus is fine for the others
            present.set(5).wait(5)
        finally:
            bus.close()


def test_duplicate_and_bad_addresses_are_refused(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    with pytest.raises(ConfigError, match="already has a mount"):
        bus.mount("2", name="again")
    for bad in ("G", "12", -1, 16, None, 2.0):
        with pytest.raises(ConfigError):
            bus.mount(bad, name="bad")
    with pytest.raises(ConfigError):
        ElliptecMount("not a bus", 2, name="x")
    with pytest.raises(ConfigError, match="limits"):
        bus.mount("3", name="x", limits=(10, -10))


def test_model_other_than_ell14_is_an_identity_mismatch(pool):
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
    bus = ElliptecBus.from_url(path, pool=pool)
    try:
        with pytest.raises(IdentityMismatch) as err:
            bus.mount(2, name="shutter", **FAST).connect()
        assert "ELL6" in str(err.value) and "ELL14" in str(err.value)
        assert path in str(err.value)
    finally:
        bus.close()
        stop.set()
        t.join(2)
        os.close(master)
        os.close(slave)


# --- motion --------------------------------------------------------------------------------------


def test_three_mounts_move_concurrently_on_one_bus(bus_on_pty, RE):
    server, bus, m = bus_on_pty(speed=2)  # 10 deg per ~0.1 s: the moves overlap in time
    sim = server.simulator
    overlap = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            overlap.append(sum(sim.is_moving(a) for a in "238"))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        docs = collect(RE)
        RE(bps.mv(m["2"], 10, m["3"], 20, m["8"], 30))
    finally:
        done.set()
        watcher.join(2)
    assert sim.position_deg(2) == pytest.approx(10, abs=0.01)
    assert sim.position_deg(3) == pytest.approx(20, abs=0.01)
    assert sim.position_deg(8) == pytest.approx(30, abs=0.01)
    assert m["8"].position == pytest.approx(30, abs=0.01)
    assert max(overlap) >= 2  # at some moment at least two mounts moved at once
    assert sim.protocol_errors == [] and sim.spacing_violations == []
    validate(docs)


def test_late_po_is_routed_to_its_mount_without_cross_talk(bus_on_pty):
    server, bus, m = bus_on_pty(speed=2)
    sim = server.simulator
    status = m["2"].set(300)  # ~0.5 s of motion; its PO arrives amid the traffic below
    readings = 0
    while not status.done:
        m["3"].trigger().wait(5)
        m["8"].velocity.set(50 + readings % 40).wait(5)
        readings += 1
        assert readings < 500
    status.wait(5)
    assert readings > 3
    assert m["2"].position == pytest.approx(300, abs=0.01)
    assert m["3"].position == pytest.approx(0.0)
    assert sim.protocol_errors == []
    stats = bus.stats()
    assert stats["unknown_addresses"] == {}
    for address in ("3", "8"):
        assert stats["endpoints"][address]["unsolicited"] == {}  # nothing of mount 2's landed here


def test_scan_documents_and_readback(bus_on_pty, RE):
    server, bus, m = bus_on_pty()
    docs = collect(RE)
    RE(bp.scan([m["8"]], m["2"], 0, 40, 5))
    validate(docs)
    events = [d for n, d in docs if n == "event"]
    assert [round(e["data"]["m2"], 2) for e in events] == [0, 10, 20, 30, 40]
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    assert descriptor["data_keys"]["m2"]["units"] == "deg"
    assert descriptor["configuration"]["m2"]["data"]["m2_velocity"] == 100


def test_readback_moves_while_moving(bus_on_pty):
    server, bus, m = bus_on_pty(speed=1)  # 180 deg at 300 deg/s: ~0.65 s
    seen = []
    status = m["2"].set(180)
    status.watch(lambda *a, current=None, **kw: seen.append(current))
    status.wait(10)
    assert m["2"].position == pytest.approx(180, abs=0.01)
    assert len({round(v, 1) for v in seen if v is not None and 1 < v < 179}) >= 2, seen


def test_out_of_range_move_reports_gs0c_by_name_then_next_move_works(bus_on_pty, RE):
    server, bus, m = bus_on_pty()
    with pytest.raises(InstrumentFault) as err:
        m["2"].set(400).wait(5)
    text = str(err.value)
    assert "GS0C out of range" in text and "address 2" in text and server.path in text
    assert err.value.code == 0x0C
    with pytest.raises(FailedStatus):
        RE(bps.mv(m["2"], -400))
    m["2"].set(15).wait(5)  # the latched GS0C was read back, so it does not resurface here
    assert m["2"].position == pytest.approx(15, abs=0.01)
    assert m["2"].last_status == 0x00
    assert STATUS_CODES[0x0C] == "out of range"


def test_mechanical_timeout_is_reported_by_name(bus_on_pty):
    server, bus, m = bus_on_pty()
    server.simulator.stall(3)
    with pytest.raises(InstrumentFault, match="GS02 mechanical timeout"):
        m["3"].set(90).wait(5)
    m["3"].set(5).wait(5)


def test_soft_limits_are_checked_before_sending(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",), mount_options={"limits": (-90, 90)})
    sent = len(server.simulator.received_lines)
    with pytest.raises(ValueRejected, match="90"):
        m["2"].set(100)
    for bad in ("10\r\n2ma00000000", float("inf"), None, True):
        with pytest.raises(ValueRejected):
            m["2"].set(bad)
    assert len(server.simulator.received_lines) == sent
    assert m["2"].limits == (-90.0, 90.0)
    assert m["2"].describe()["m2_setpoint"]["limits"]["control"] == {"low": -90.0, "high": 90.0}


@pytest.mark.parametrize("angle", [1e308, -1e308, 6e6])
def test_an_angle_no_position_can_hold_is_refused_naming_the_mount(bus_on_pty, angle):
    # 1e308 deg overflows to inf pulses; 6e6 deg is finite but beyond a signed 32-bit position.
    server, bus, m = bus_on_pty(mounts=("2",))
    sent = len(server.simulator.received_lines)
    with pytest.raises(ValueRejected) as err:
        m["2"].set(angle)
    msg = str(err.value)
    assert "'m2'" in msg and "address 2" in msg and server.path in msg and f"{angle!r}" in msg
    assert len(server.simulator.received_lines) == sent


def test_moves_to_one_mount_are_spaced(bus_on_pty):
    # Device time = real time: a second move within 100 ms of the first would go to 0.
    server, bus, m = bus_on_pty(mounts=("2",), speed=1)
    sim = server.simulator
    for target in (1, 2, 3, 4):
        m["2"].set(target).wait(5)
    assert sim.spacing_violations == []
    assert sim.position_deg(2) == pytest.approx(4, abs=0.01)


def test_home_returns_to_zero(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    m["2"].set(-45).wait(5)
    assert server.simulator.position_deg(2) == pytest.approx(-45, abs=0.01)
    m["2"].home().wait(5)
    assert m["2"].position == pytest.approx(0.0)
    assert any(line.startswith("2ho") for line in server.simulator.received_lines)


def test_velocity_is_configuration(bus_on_pty, RE):
    server, bus, m = bus_on_pty(mounts=("2",))
    m["2"].velocity.set(40).wait(5)
    assert m["2"].velocity.get() == 40
    assert "2sv28" in server.simulator.received_lines
    RE(bps.configure(m["2"], {"velocity": 60}))
    assert m["2"].read_configuration()["m2_velocity"]["value"] == 60
    for bad in (0, 101, 50.5, "fast"):
        with pytest.raises(ValueRejected):
            m["2"].velocity.set(bad)


def test_refresh_reads_a_velocity_set_behind_the_drivers_back(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    sim = server.simulator
    with sim.lock:  # another program on the bus, not this driver
        sim._mount(2).velocity_pct = 35
    before = len(sim.received_lines)
    m["2"].refresh_configuration()
    assert m["2"].read_configuration()["m2_velocity"]["value"] == 35
    assert sim.received_lines[before:] == ["2gv"]  # a query only: nothing set


@pytest.mark.parametrize(
    ("fault", "error"), [("garble_next", ReplyError), ("drop_next", InstrumentTimeout)]
)
def test_refresh_with_a_bad_reply_names_the_mount(bus_on_pty, fault, error):
    server, bus, m = bus_on_pty(mounts=("2",), seed=7)
    setattr(server.simulator.faults, fault, 1)
    with pytest.raises(error) as err:
        m["2"].refresh_configuration()
    assert "address 2" in str(err.value) and server.path in str(err.value)
    assert m["2"].velocity.get() == 100
    m["2"].refresh_configuration()  # the next one reads again
    assert m["2"].velocity.get() == 100


def test_abort_during_move_sends_st(bus_on_pty, RE):
    server, bus, m = bus_on_pty(mounts=("2",), speed=0.5)  # 300 deg takes ~2 s
    sim = server.simulator

    def plan():
        yield from bps.abs_set(m["2"], 300, group="rot")
        yield from bps.sleep(0.3)
        raise RuntimeError("operator abort")

    with pytest.raises(RuntimeError, match="operator abort"):
        RE(plan())
    assert wait_until(lambda: "2st" in sim.received_lines, 5)
    assert wait_until(lambda: not sim.is_moving(2), 5)
    assert 1 < sim.position_deg(2) < 299
    m["2"].set(10).wait(10)  # the next move works and is not confused by the stop's PO
    assert m["2"].position == pytest.approx(10, abs=0.01)


def test_stop_fails_the_move_status(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",), speed=0.5)
    status = m["2"].set(-200)
    assert wait_until(lambda: server.simulator.is_moving(2), 5)
    m["2"].stop()
    with pytest.raises(InstrumentError, match="stopped"):
        status.wait(5)
    assert wait_until(lambda: not server.simulator.is_moving(2), 5)
    assert "2st" in server.simulator.received_lines


def test_a_settle_never_meets_a_stop_thread_that_has_not_started(bus_on_pty):
    # A settle on the mount's worker joins the thread that sends st, so the st is on the wire
    # before the settle's gs. stop() used to publish that thread before starting it, and a
    # settle running in between failed ("cannot join thread before it is started"). The
    # interleaving is made certain here: at every line stop() runs, do what a settle does first.
    server, bus, m = bus_on_pty(mounts=("2",), speed=0.5)
    mount = m["2"]
    status = mount.set(-200)
    assert wait_until(lambda: server.simulator.is_moving(2), 5)
    failures = []

    def settle_first(frame, event, arg):
        if event == "line":
            stopper = mount._stop_thread
            if stopper is not None:
                try:
                    stopper.join(5)
                except RuntimeError as exc:
                    failures.append(str(exc))
        return settle_first

    def trace_stop(frame, event, arg):
        return settle_first if frame.f_code is ElliptecMount.stop.__code__ else None

    previous = sys.gettrace()
    sys.settrace(trace_stop)
    try:
        mount.stop()
    finally:
        sys.settrace(previous)
    assert failures == []
    with pytest.raises(InstrumentError, match="stopped"):
        status.wait(5)
    assert wait_until(lambda: "2st" in server.simulator.received_lines, 5)


# --- faults --------------------------------------------------------------------------------------


def test_dropped_end_of_move_fails_clearly_then_next_move_works(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    server.simulator.faults.drop_next = 1
    with pytest.raises(ReplyError) as err:
        m["2"].set(30).wait(10)
    assert "address 2" in str(err.value) and server.path in str(err.value)
    m["2"].set(35).wait(10)
    assert m["2"].position == pytest.approx(35, abs=0.01)


def test_garbled_replies_fail_clearly_then_next_move_works(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",), seed=7)
    for target in (30, 60, 90):
        server.simulator.faults.garble_next = 1
        with pytest.raises((ReplyError, InstrumentFault)) as err:
            m["2"].set(target).wait(10)
        assert "address 2" in str(err.value)
        m["2"].set(target + 5).wait(10)
        assert m["2"].position == pytest.approx(target + 5, abs=0.01)


def test_a_late_po_does_not_end_the_next_move(bus_on_pty):
    # A PO of an earlier exchange (the reply to a poll that timed out, a stop's report) that
    # comes in while the mount moves must not be taken for the end of this move.
    server, bus, m = bus_on_pty(mounts=("2",), speed=0.5)  # 90 deg at 150 deg/s: ~0.7 s
    sim = server.simulator
    status = m["2"].set(90)
    assert wait_until(lambda: sim.is_moving(2), 5)
    sim.emit_unsolicited(b"2PO00001000\r\n")  # 10.3 deg: where the mount was long ago
    status.wait(10)
    assert m["2"].position == pytest.approx(90, abs=0.01)
    assert sim.position_deg(2) == pytest.approx(90, abs=0.01)


def test_dropped_reply_to_a_query_times_out_clearly(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    server.simulator.faults.drop_next = 1
    with pytest.raises(InstrumentTimeout, match="gp"):
        m["2"].trigger().wait(5)
    m["2"].trigger().wait(5)


def test_a_lost_port_is_reported_naming_the_mount(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    server.unplug()
    assert wait_until(lambda: bus.stats()["lost"], 5)  # the bus reader saw the cable go
    for action in (lambda: m["2"].trigger(), lambda: m["2"].set(20)):
        with pytest.raises(PortUnavailable) as err:
            action().wait(5)
        msg = str(err.value)
        assert "'m2'" in msg and "address 2" in msg and server.path in msg
        assert err.value.instrument == "m2"


def test_sim_url_bus(pool, RE):
    name = f"ell-{uuid.uuid4().hex[:8]}"
    bus = ElliptecBus.from_url(f"sim://elliptec?name={name}&addresses=2,3&speed=10", pool=pool)
    try:
        a = bus.mount("2", name="hwp", **FAST)
        b = bus.mount(3, name="qwp", **FAST)
        bus.connect()
        assert sorted(bus.detect(range(6), timeout=0.1)) == ["2", "3"]
        docs = collect(RE)
        RE(bp.grid_scan([], a, 0, 20, 3, b, -10, 10, 3))
        validate(docs)
        assert len([d for n, d in docs if n == "event"]) == 9
        assert b.position == pytest.approx(10, abs=0.01)
    finally:
        bus.close()
        unregister(name)


def test_mount_built_directly_joins_its_bus(bus_on_pty):
    server, bus, m = bus_on_pty(mounts=("2",))
    direct = ElliptecMount(bus, 3, name="direct", **FAST)
    assert bus.mounts["3"] is direct
    with pytest.raises(ConfigError, match="already has a mount"):
        ElliptecMount(bus, "3", name="twice")
    bus.connect()
    direct.set(12).wait(5)
    assert server.simulator.position_deg(3) == pytest.approx(12, abs=0.01)
    direct.close()
    assert "3" not in bus.mounts


# --- maintenance commands (issue 14), pinned to tests/transcripts/elliptec.yaml ----------------

TRANSCRIPTS = yaml.safe_load(
    (Path(__file__).parents[1] / "transcripts" / "elliptec.yaml").read_text(encoding="utf-8")
)


def _replies() -> list[str]:
    at_rest = [r for _, r in TRANSCRIPTS["at_rest"] + TRANSCRIPTS["isolate"] if r]
    long_runs = [r for _, busy, done in TRANSCRIPTS["long_runs"] for r in (busy, done)]
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


def test_a_long_optimize_on_one_address_does_not_disturb_a_move_on_another(bus_on_pty):
    server, bus, mounts = bus_on_pty(addresses="2,3", mounts=("2", "3"), speed=60)
    optimizing = bus.endpoint("3")
    optimizing.send(b"3om")
    # The mount at 3 now sends GS09 unprompted; wait for one to be sure the run is under way.
    assert optimizing.wait_for("GS", timeout=5.0) == b"3GS09"
    mounts["2"].move(45.0, wait=True)
    assert mounts["2"].position == pytest.approx(45.0, abs=0.1)
    assert server.simulator.position_deg(2) == pytest.approx(45.0, abs=0.1)
    assert b"2GS09" not in bus.endpoint("2").pending()
    # The run ends with GS00 on its own address; then mount 3 moves as usual.
    deadline = time.monotonic() + 10.0
    while optimizing.wait_for("GS", timeout=max(0.0, deadline - time.monotonic())) != b"3GS00":
        pass
    mounts["3"].move(-10.0, wait=True)
    assert mounts["3"].position == pytest.approx(-10.0, abs=0.1)
    assert server.simulator.protocol_errors == []
