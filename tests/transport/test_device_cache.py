"""DeviceCache: serial ports (incl. ptys the OS does not list), VISA resources, exists()."""

from __future__ import annotations

import os
from pathlib import Path

from daqbridge.transport import DeviceCache, VisaSessionManager

SIM = f"{Path(__file__).with_name('visa_two_instruments.yaml')}@sim"


def test_lists_a_configured_pty_and_an_open_one(pool, make_peer, tmp_path):
    configured = make_peer()
    opened = make_peer()
    link = tmp_path / "usb-Spectra_MaiTai"
    os.symlink(opened.device, link)
    pool.open(str(link))
    cache = DeviceCache(pool=pool, extra_ports=[configured.device], visa_backends=())
    ports = {p.device: p for p in cache.serial_ports()}
    assert ports[configured.device].source == "configured"
    assert not ports[configured.device].in_use
    assert ports[opened.device].source == "open" and ports[opened.device].in_use
    assert str(link) in ports[opened.device].aliases
    text = cache.describe()
    assert configured.device in text and opened.device in text and "IN USE" in text


def test_exists_for_paths_urls_and_visa(pool, peer, tmp_path):
    cache = DeviceCache(pool=pool, visa_backends=[SIM])
    assert cache.exists(peer.device)
    assert not cache.exists(str(tmp_path / "ttyUSB7"))
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "gone", dangling)
    assert not cache.exists(str(dangling))
    for url in ("socket://127.0.0.1:5025", "loop://", "sim://esp300?speed=10"):
        assert cache.exists(url)
    assert cache.exists("GPIB0::20::INSTR")
    assert not cache.exists("GPIB0::21::INSTR")
    assert not cache.exists("")


def test_visa_listing_with_identities_is_cached(tmp_path):
    visa = VisaSessionManager(timeout=0.5)
    try:
        cache = DeviceCache(visa=visa, visa_backends=[SIM])
        plain = cache.visa_resources()
        assert {r.resource for r in plain} == {
            "TCPIP0::192.168.1.100::inst0::INSTR",
            "GPIB0::20::INSTR",
        }
        ident = {r.resource: r.identity for r in cache.visa_resources(identify=True)}
        assert ident["GPIB0::20::INSTR"].startswith("KEITHLEY")
        assert "34465A" in ident["TCPIP0::192.168.1.100::inst0::INSTR"]
        queries = sum(s.stats()["queries"] for s in visa.sessions.values())
        assert queries == 2
        cache.visa_resources(identify=True)  # cached: nobody is asked again
        assert sum(s.stats()["queries"] for s in visa.sessions.values()) == queries
        assert "34465A" in cache.describe(identify=True)
    finally:
        visa.close_all()


def test_serial_listing_is_cached_until_refresh(peer, tmp_path):
    cache = DeviceCache(visa_backends=())
    before = {p.device for p in cache.serial_ports()}
    # a profile's stable name for the port (the pty number itself may be reused by the kernel)
    link = tmp_path / "usb-Newport_1830-C"
    os.symlink(peer.device, link)
    cache.add_port(str(link))  # forgets the cached listing
    (entry,) = [p for p in cache.serial_ports() if str(link) in p.aliases]
    assert entry.device == peer.device and entry.source == "configured"
    link.unlink()  # unplugged: the by-id style link disappears
    assert any(str(link) in p.aliases for p in cache.serial_ports())  # still cached
    after = cache.serial_ports(refresh=True)
    assert not any(str(link) in p.aliases for p in after)
    assert before <= {p.device for p in after}  # the OS-listed ports are still there


def test_a_broken_backend_is_reported_not_raised():
    cache = DeviceCache(visa_backends=["/no/such/defs.yaml@sim"])
    (entry,) = cache.visa_resources()
    assert entry.resource == "" and "cannot load VISA backend" in entry.error
    assert "error: cannot load VISA backend" in cache.describe()
    cache.close()
