"""Multi-drop bus: packets routed by address and kind; late packets never reach another device."""

from __future__ import annotations

import threading
import time

import pytest

from daqbridge.errors import InstrumentTimeout, PortUnavailable, ResourceError


class ElliptecBusDevices:
    """Device side of a bus with rotation mounts at addresses 2 and 3.

    ``gp`` answers ``PO`` at once, ``gs`` answers ``GS00``, ``ma`` answers ``PO`` only when the
    move ends. A move's late ``PO`` is held back and released just before the next request to
    ANOTHER address is answered, so it lands in the middle of that transaction, the trap of
    real Elliptec buses.
    """

    def __init__(self) -> None:
        self.position = {"2": 0, "3": 0}
        self.late: list[bytes] = []
        self.peer = None

    def handle(self, packet: bytes) -> bytes | None:
        addr, cmd, data = chr(packet[0]), packet[1:3], packet[3:]
        if addr not in self.position:
            return None  # absent address: silence, as on a real bus
        head = b""
        if self.late and not self.late[0].startswith(addr.encode()):
            head = self.late.pop(0)
        if cmd == b"gp":
            return head + b"%sPO%08X\r\n" % (addr.encode(), self.position[addr])
        if cmd == b"gs":
            return head + b"%sGS00\r\n" % addr.encode()
        if cmd == b"ma":
            self.position[addr] = int(data, 16)
            self.late.append(b"%sPO%08X\r\n" % (addr.encode(), self.position[addr]))
            return head or None
        return head or None


@pytest.fixture
def bus_setup(pool, make_peer, elliptec_router, host_splitter, tmp_path):
    devices = ElliptecBusDevices()
    # A stable link, as /dev/serial/by-id is: a bare /dev/pts/N number can be reused by another
    # test's new pty right after an unplug, and a reopen would then find the wrong device.
    peer = make_peer(devices.handle, splitter=host_splitter, link=tmp_path / "elliptec-bus")
    devices.peer = peer
    port = pool.open(peer.path)
    bus = port.bus(elliptec_router)
    return devices, peer, port, bus


def test_late_packet_of_one_address_never_reaches_another(bus_setup):
    devices, peer, port, bus = bus_setup
    ell2, ell3 = bus.endpoint("2"), bus.endpoint("3")
    ell2.send(b"2ma00004600", owner="ell14-2")  # 45 deg; its PO comes late
    # this request of address 3 gets device 2's late PO first on the wire, then its own reply
    assert ell3.transact(b"3gp", {"PO"}, timeout=1.0, owner="ell14-3") == b"3PO00000000"
    for _ in range(5):
        assert ell3.transact(b"3gp", "PO", timeout=1.0).startswith(b"3PO")
    assert ell2.wait_for({"PO"}, timeout=1.0) == b"2PO00004600"
    assert ell2.unsolicited == {"PO": 1}  # it arrived while nobody at address 2 waited
    assert ell3.unsolicited == {}
    assert ell3.stats()["received"] == 6 and ell2.stats()["received"] == 1


def test_other_kinds_stay_in_the_inbox(bus_setup):
    devices, peer, port, bus = bus_setup
    ell2 = bus.endpoint("2")
    peer.send(b"2GS09\r\n")  # a status packet nobody asked for (moving)
    deadline = time.monotonic() + 2
    while not ell2.pending() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ell2.transact(b"2gp", {"PO"}, timeout=1.0) == b"2PO00000000"
    assert ell2.pending() == [b"2GS09"]
    assert ell2.discard({"GS"}) == [b"2GS09"]
    assert ell2.pending() == []
    # a stale packet of the expected kind, older than the request, is not taken as the reply
    peer.send(b"2PO0000FFFF\r\n")
    deadline = time.monotonic() + 2
    while not ell2.pending() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ell2.transact(b"2gp", {"PO"}, timeout=1.0) == b"2PO00000000"
    assert ell2.wait_for("PO", 0.5) == b"2PO0000FFFF"


def test_junk_and_unknown_addresses_are_counted_not_delivered(bus_setup):
    devices, peer, port, bus = bus_setup
    ell2 = bus.endpoint("2")
    peer.send(b"\r\n##noise\r\n5PO00000001\r\n2GS00\r\n")
    assert ell2.wait_for({"GS"}, 1.0) == b"2GS00"
    assert bus.unknown_addresses == {"5": 1}
    assert bus.orphans() == [b"5PO00000001"]
    assert bus.stats()["endpoints"]["2"]["received"] == 1


def test_absent_address_times_out_with_a_clear_message(bus_setup):
    devices, peer, port, bus = bus_setup
    with pytest.raises(InstrumentTimeout) as err:
        bus.endpoint("7").transact(b"7gs", {"GS"}, timeout=0.2)
    msg = str(err.value)
    assert "no GS packet from address 7 within 0.200 s after sending b'7gs'" in msg
    assert err.value.resource == port.url


def test_threads_on_different_addresses_share_the_bus(bus_setup):
    devices, peer, port, bus = bus_setup
    problems: list[str] = []

    def worker(addr: str, n: int) -> None:
        ep = bus.endpoint(addr)
        for i in range(n):
            try:
                reply = ep.transact(b"%sgp" % addr.encode(), {"PO"}, 2.0, owner=f"mount-{addr}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{addr}/{i}: {exc}")
                return
            if not reply.startswith(addr.encode() + b"PO"):
                problems.append(f"{addr}/{i}: got {reply!r}")

    threads = [threading.Thread(target=worker, args=(a, 150)) for a in ("2", "3", "2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert problems == []
    assert all(not t.is_alive() for t in threads)


def test_leases_may_write_but_not_read_on_a_bus_port(bus_setup, elliptec_router):
    devices, peer, port, bus = bus_setup
    assert port.bus(type(elliptec_router)()) is bus  # idempotent per port

    class OtherRouter:
        def split(self, buffer):
            return []

        def address_of(self, packet):
            return "0"

        def kind_of(self, packet):
            return "XX"

    with pytest.raises(ResourceError, match="already runs a bus"):
        port.bus(OtherRouter())
    with pytest.raises(ResourceError, match="not a bus router"):
        port.bus(object())
    ell2 = bus.endpoint("2")  # packets of addresses without an endpoint are orphans
    with port.lease("legacy-elliptec", 1.0) as lease:
        lease.write(b"2gs")
        with pytest.raises(ResourceError, match="reader owns all incoming bytes"):
            lease.read_until(b"\r\n", 0.1)
    assert ell2.wait_for("GS", 1.0) == b"2GS00"


def test_bad_endpoint_arguments(bus_setup):
    devices, peer, port, bus = bus_setup
    with pytest.raises(ResourceError, match="non-empty str"):
        bus.endpoint("")
    ep = bus.endpoint("2")
    with pytest.raises(ResourceError, match="non-empty set"):
        ep.transact(b"2gp", set(), 1.0)
    with pytest.raises(ResourceError, match="finite"):
        ep.wait_for("PO", float("inf"))


def test_lost_port_fails_bus_waits_promptly(bus_setup):
    devices, peer, port, bus = bus_setup
    ep = bus.endpoint("2")
    result = {}

    def wait():
        t0 = time.monotonic()
        try:
            ep.wait_for({"PO"}, timeout=10.0)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc
        result["took"] = time.monotonic() - t0

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.05)
    peer.unplug()
    th.join(5)
    assert isinstance(result["error"], PortUnavailable)
    assert result["took"] < 3.0
    with pytest.raises(PortUnavailable):
        ep.transact(b"2gp", {"PO"}, 1.0)


def test_bus_close_hands_reads_back_to_leases(bus_setup):
    devices, peer, port, bus = bus_setup
    bus.close()
    with port.lease("plain", 1.0) as lease:
        assert lease.query(b"2gs", b"\r\n", 1.0) == b"2GS00"
    assert port.stats()["bus"] is None
