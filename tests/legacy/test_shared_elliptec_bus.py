"""A legacy Elliptec driver and native Elliptec mounts on ONE bus at the same time.

This is the migration situation DESIGN.md is about: the legacy driver keeps polling mounts 2 and
3 while a native device moves mount 8 on the same line. Each side brings its own router (they
are written independently); the bus accepts both because they declare the same protocol, and
its single reader routes every packet by address, so a late ``PO`` from one side's move never
lands in the other's transaction.
"""

from __future__ import annotations

import threading

import pytest
from bluesky import RunEngine

from daqbridge.devices.core import call_sync
from daqbridge.devices.elliptec import ElliptecBus as NativeBus
from daqbridge.legacy import Command, LegacyRuntime, parse_legacy_config
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool
from tests.legacy.legacy_test_instruments import wait_until


@pytest.fixture
def pool():
    with SerialPortPool() as p:
        yield p


def test_legacy_and_native_drivers_share_one_elliptec_bus(pool):
    with serve_pty("elliptec", addresses=[2, 3, 8], speed=20.0) as server:
        sim = server.simulator
        cfg = parse_legacy_config(
            f"""
[instruments.legacy_mounts]
type = "elliptec"
port = "{server.path}"
device_addresses = [2, 3]
polling_rate_hz = 10
command_spacing_s = 0.02
move_timeout_s = 10
""",
            source="shared.toml",
        )
        legacy = LegacyRuntime.from_config(cfg, pool)
        legacy.start()
        port = pool.open(str(server.path), baudrate=9600)
        native = NativeBus(port, name="native_bus")
        mount = native.mount("8", name="analyser")
        RunEngine({}, context_managers=[])  # the mount lives on the RunEngine's loop
        call_sync(native.connect(10.0), timeout=15.0)
        try:
            assert legacy.wait_running(10.0)
            errors: list[BaseException] = []

            def legacy_moves() -> None:
                try:
                    for angle in (10.0, 20.0, 30.0):
                        res = legacy.submit(
                            "legacy_mounts", Command.set("position_2", angle), timeout=15.0
                        )
                        assert res.ok, res.message
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            worker = threading.Thread(target=legacy_moves)
            worker.start()
            for angle in (15.0, -25.0, 40.0):
                call_sync(lambda angle=angle: mount.set(angle), device=mount, timeout=15.0)
            worker.join(60.0)
            assert not worker.is_alive()
            assert not errors, errors

            assert sim.position_deg("8") == pytest.approx(40.0, abs=0.01)
            assert sim.position_deg("2") == pytest.approx(30.0, abs=0.01)
            # The legacy poller kept reading mount 3 during all of this.
            sub = legacy.distributor.subscribe(name="check", channels=["position_3"])
            assert wait_until(lambda: sub.drain(), 5.0)
            # Nothing either side sent was garbled by the other (no interleaved bytes).
            assert sim.protocol_errors == []
            assert native.stats()["junk"] == 0  # the one router framing the line saw no noise
        finally:
            legacy.stop(5.0)
            native.close()


def test_a_native_run_records_the_setpoint_the_legacy_driver_gave_the_mount(pool):
    """Shadow: the legacy twin moves the mount the native device also drives (issue 18, item 8).

    The native ``setpoint`` was the native driver's last target, so a run after a legacy move
    recorded a setpoint the mount had never been given. Every recorded value must be one the
    instrument was commanded to and reported: here the simulator's position.
    """
    import bluesky.plans as bp

    with serve_pty("elliptec", addresses=[2], speed=20.0) as server:
        sim = server.simulator
        cfg = parse_legacy_config(
            f"""
[instruments.twin]
type = "elliptec"
port = "{server.path}"
device_addresses = [2]
polling_rate_hz = 0
timeout_s = 5
""",
            source="shadow.toml",
        )
        legacy = LegacyRuntime.from_config(cfg, pool)
        legacy.start()
        port = pool.open(str(server.path), baudrate=9600)
        native = NativeBus(port, name="rot")
        mount = native.mount("2", name="rot_a", reply_timeout=5.0)
        RE = RunEngine({}, context_managers=[])  # the mount lives on the RunEngine's loop
        call_sync(native.connect(10.0), timeout=15.0)
        try:
            assert legacy.wait_running(10.0)
            call_sync(lambda: mount.set(10.0), device=mount, timeout=15.0)
            res = legacy.submit("twin", Command.set("position_2", 30.0), timeout=15.0)
            assert res.ok, res.message
            truth = sim.position_deg("2")
            assert truth == pytest.approx(30.0, abs=0.01)

            events: list[dict] = []
            RE.subscribe(lambda name, doc: events.append(doc["data"]), "event")
            RE(bp.count([mount], 2))
            assert [e["rot_a_setpoint"] for e in events] == pytest.approx([truth] * 2, abs=0.01)
            assert [e["rot_a"] for e in events] == pytest.approx([truth] * 2, abs=0.01)
        finally:
            legacy.stop(5.0)
            native.close()
