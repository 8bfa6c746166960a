"""``read`` and ``sync`` of the session: an ophyd-async device at the prompt without ``await``."""

from __future__ import annotations

import pytest
from bluesky import RunEngine
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd.sim import det

from daqbridge.cli._session import STANDARD_NAMES, read, sync
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool


@pytest.fixture
def meter():
    RunEngine({})  # its loop is where the meter lives, as in a session
    with (
        SerialPortPool() as pool,
        serve_pty("newport1830c", noise=0, input_power=7.5e-7, power_range=4) as server,
    ):
        pm = Newport1830C(pool.open(server.path, baudrate=9600), name="sim_meter", timeout=0.5)
        call_in_bluesky_event_loop(pm.connect(), timeout=10)
        try:
            yield pm
        finally:
            pm.close()


def test_read_and_sync_reach_the_ophyd_async_meter_from_the_prompt(meter):
    assert {"read", "sync"} <= STANDARD_NAMES  # a device id cannot hide them
    reading = read(meter)
    assert reading["sim_meter_power"]["value"] == pytest.approx(7.5e-7, rel=1e-3)
    assert read(meter.wavelength)["sim_meter_wavelength"]["value"] == 800
    assert sync(meter.power.get_value()) == pytest.approx(7.5e-7, rel=1e-3)
    assert sync(3) == 3  # a plain value is returned as it is


def test_read_works_for_an_ophyd_v1_device_too():
    assert "det" in read(det)
