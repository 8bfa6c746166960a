"""A shadow comparison whose field goes missing on one side says which side and which field.

``check_field`` refuses a field a device does not describe before any reading; this is the
other case of issue 18 (item 8): a driver that describes the field but whose reading no longer
has it (a channel that stopped publishing). That pair could not be compared, and the report must
say so in words instead of a bare ``KeyError``. A run read back from the catalog is the third:
a field it lacks is refused naming the run, the field and the fields the run has.
"""

from __future__ import annotations

import warnings

import pytest
from bluesky import RunEngine

from daqbridge.bridge._shadow import (
    ShadowComparison,
    ShadowPair,
    ShadowReport,
    ShadowRunUnreadable,
    shadow_compare_plan,
)
from daqbridge.catalog import open_catalog
from daqbridge.cli._shadow import EXIT_NOT_COMPARED
from daqbridge.devices.core import call_sync
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.errors import InstrumentError
from daqbridge.sim import Newport1830CSimulator, serve_pty
from daqbridge.transport import SerialPortPool


class ChannelStopped:
    """A real meter whose ``read()`` has lost the power field its ``describe()`` still lists."""

    def __init__(self, device: Newport1830C) -> None:
        self._device = device
        self.name = device.name
        self.parent = None
        self.hints = device.hints
        self._described = call_sync(device.describe(), timeout=10)

    def describe(self):
        return self._described

    async def read(self):  # the meter is ophyd-async (no trigger: its read asks the meter)
        reading = dict(await self._device.read())
        del reading[f"{self.name}_power"]
        return reading


@pytest.fixture
def meters():
    sim = Newport1830CSimulator(optical_input=lambda: 1.5e-6, noise=0, speed=100)
    with SerialPortPool() as pool, serve_pty(sim) as server:
        port = pool.open(server.path, baudrate=9600)
        native = Newport1830C(port, name="meter")
        twin = Newport1830C(port, name="meter_legacy")
        call_sync(native.connect(), timeout=10)  # ophyd-async: coroutines, run on a loop
        call_sync(twin.connect(), timeout=10)
        try:
            yield native, twin
        finally:
            twin.close()
            native.close()


def test_a_field_missing_from_the_legacy_reading_is_a_failed_read_naming_side_and_field(meters):
    native, twin = meters
    report = ShadowComparison(native, ChannelStopped(twin), rtol=0.01).run(2)
    assert report.n == 0 and not report.ok
    assert [f.side for f in report.failures] == ["legacy", "legacy"]
    for failure in report.failures:
        assert "legacy device 'meter_legacy' describes 'meter_legacy_power'" in failure.message
        assert "could not be compared" in failure.message


def test_a_shadow_pair_names_the_side_whose_reading_lacks_the_field(meters):
    from daqbridge.errors import InstrumentError

    native, twin = meters
    pair = ShadowPair(ChannelStopped(native), twin)
    call_sync(lambda: pair.trigger(), timeout=10)  # its status is made on the devices' loop
    with pytest.raises(InstrumentError, match=r"native device 'meter' describes 'meter_power'"):
        call_sync(pair.read, timeout=10)


class TriggerFails:
    """A real meter that fails before its first reading (a driver that lost its instrument)."""

    def __init__(self, device: Newport1830C) -> None:
        self._device = device
        self.name = device.name
        self.parent = None
        self.hints = device.hints
        self._described = call_sync(device.describe(), timeout=10)

    def describe(self):
        return self._described

    def read(self):
        return self._device.read()

    def trigger(self):
        raise InstrumentError("no reply to D? (the stand-in for a meter that was unplugged)")


@pytest.fixture
def record(runtime_catalog_template, tmp_path):
    """Run a plan on a real RunEngine into a real catalog; return the run as read back."""
    from tests.runtime.conftest import copy_catalog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Tiled's in-process deprecation warnings
        catalog = open_catalog(copy_catalog(runtime_catalog_template, tmp_path / "data"))
    RE = RunEngine({}, context_managers=[])
    RE.subscribe(catalog.writer)

    def run(plan):
        uids: list[str] = []
        RE.subscribe(lambda name, doc: uids.append(doc["uid"]) if name == "start" else None)
        try:
            RE(plan)
        except Exception:  # noqa: BLE001 - a failed run is still recorded; that is the point
            pass
        catalog.flush()
        return catalog[uids[-1]]

    try:
        yield run
    finally:
        catalog.close()


def test_a_recorded_run_lacking_the_named_field_names_the_run_the_field_and_its_fields(
    meters, record
):
    native, twin = meters
    run = record(shadow_compare_plan(twin, native, 2, rtol=0.01))
    uid = run.metadata["start"]["uid"]
    assert ShadowReport.from_run(run).n == 2  # the run itself is whole
    with pytest.raises(ShadowRunUnreadable) as refused:
        ShadowReport.from_run(run, legacy_field="meter_legacy_wavelength")
    message = str(refused.value)
    assert f"run {uid} has no field 'meter_legacy_wavelength'" in message
    assert "it recorded: meter_legacy_power, meter_minus_meter_legacy, meter_power" in message
    # the CLI prints a DaqbridgeError without a traceback and exits with its exit_status
    assert refused.value.exit_status == EXIT_NOT_COMPARED


def test_a_recorded_shadow_run_without_readings_says_so(meters, record):
    native, twin = meters
    run = record(shadow_compare_plan(TriggerFails(twin), native, 2))
    with pytest.raises(ShadowRunUnreadable, match=r"recorded no readings \(no 'primary'"):
        ShadowReport.from_run(run)
