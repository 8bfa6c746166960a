"""MeasurementBridge: free-running legacy streams recorded as event-model runs.

A real legacy 1830-C driver polls the simulator on a real pty while the bridge writes into a real
(SQLite) catalog; the runs are read back and compared with what the distributor published.
Rotation, drops and unit changes are driven through a real DataDistributor.
"""

from __future__ import annotations

import json
import threading
import time
import warnings

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from daqbridge.bridge._measurement import BRIDGE_PLAN_NAME, MeasurementBridge
from daqbridge.errors import ConfigError
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    DataDistributor,
    LegacyInstrument,
    LegacyRuntime,
    Measurement,
    ParameterInfo,
    parse_legacy_config,
)
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool


def wait_until(predicate, timeout=5.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Documents:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, name, doc):
        with self.lock:
            self.items.append((name, doc))

    def of(self, name):
        return [d for n, d in list(self.items) if n == name]

    def validate(self):
        assert self.items
        for name, doc in self.items:
            schema_validators[DocumentNames(name)].validate(doc)


class Spectrometer(LegacyInstrument):
    """Two channels with their own units and an array channel; nothing to command."""

    def __init__(self) -> None:
        super().__init__("spec")
        self.n = 0

    def connect(self):
        pass

    def disconnect(self):
        pass

    def poll(self):
        self.n += 1
        return [
            self.measurement("peak", 500.0 + self.n),
            self.measurement("counts", self.n),
            self.measurement("spectrum", np.arange(4.0) * self.n),
        ]

    def handle(self, command: Command) -> CommandResult:
        return CommandResult.failure("nothing to command", instrument=self.instrument_id)

    def channels(self):
        return {
            "peak": ChannelInfo("peak", "nm", "number"),
            "counts": ChannelInfo("counts", "", "integer"),
            "spectrum": ChannelInfo("spectrum", "a.u.", "array", (4,)),
        }

    def parameters(self) -> dict[str, ParameterInfo]:
        return {}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from daqbridge.catalog import open_catalog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = open_catalog(tmp_path_factory.mktemp("bridge-catalog"))
    yield cat
    cat.close()


def test_polled_meter_is_recorded_into_the_catalog_with_its_own_timestamps(catalog):
    with (
        SerialPortPool() as pool,
        serve_pty("newport1830c", noise=0, input_power=1.25e-6, speed=100) as server,
    ):
        cfg = parse_legacy_config(
            f"""
[instruments.meter]
type = "newport_1830c"
port = "{server.path}"
polling_rate_hz = 40
""",
            source="test.toml",
        )
        rt = LegacyRuntime.from_config(cfg, pool)
        published: list[Measurement] = []
        rt.distributor.subscribe(published.append, name="truth", maxsize=10_000)
        bridge = MeasurementBridge(
            rt, catalog.writer, max_events_per_run=6, metadata={"operator": "test"}
        )
        bridge.start()
        rt.start()
        try:
            assert wait_until(lambda: bridge.stats().events >= 14, timeout=10)
            server.simulator.set_input_power(2.5e-6)
            assert wait_until(lambda: any(m.value > 2e-6 for m in list(published)), timeout=5)
        finally:
            rt.stop(5)
        stats = bridge.stop()
    assert wait_until(lambda: len(published) == rt.distributor.published)
    assert stats.dropped == 0 and stats.writer_errors == 0
    assert stats.events == len(published)
    catalog.flush()
    by_time = {m.timestamp: m.value for m in published}
    recorded = 0
    for i, uid in enumerate(stats.runs):
        run = catalog[uid]
        start = run.metadata["start"]
        assert start["plan_name"] == BRIDGE_PLAN_NAME and start["daqbridge_bridge"] is True
        assert start["legacy_instruments"] == ["meter"] and start["operator"] == "test"
        assert start["bridge_run_index"] == i
        stop = run.metadata["stop"]
        assert stop["exit_status"] == "success"
        ds = run["meter_power"].read()
        times = list(ds["time"].values)
        assert len(times) <= 6
        for t, v in zip(times, ds["meter_power"].values, strict=True):
            assert by_time[t] == pytest.approx(v)  # same value at the same instant
        recorded += len(times)
        assert run["meter_power"].metadata["data_keys"]["meter_power"]["units"] == "W"
    assert recorded == len(published)  # nothing lost
    assert len(stats.runs) >= 3
    reasons = [catalog[u].metadata["stop"]["reason"] for u in stats.runs]
    assert reasons[:-1] == ["rotated after 6 events"] * (len(reasons) - 1)
    assert reasons[-1] == "bridge stopped"
    values = [m.value for m in published]
    assert values[0] == pytest.approx(1.25e-6) and values[-1] == pytest.approx(2.5e-6)


def test_each_channel_is_a_stream_with_its_units_dtype_and_shape():
    rt = LegacyRuntime()
    rt.add(Spectrometer(), 100)
    docs = Documents()
    bridge = MeasurementBridge(rt, docs)
    bridge.start()
    rt.start()
    try:
        assert wait_until(lambda: bridge.stats().events >= 9)
    finally:
        rt.stop(2)
    bridge.stop()
    docs.validate()
    descriptors = {d["name"]: d for d in docs.of("descriptor")}
    assert set(descriptors) == {"spec_peak", "spec_counts", "spec_spectrum"}
    assert descriptors["spec_peak"]["data_keys"]["spec_peak"]["units"] == "nm"
    assert descriptors["spec_counts"]["data_keys"]["spec_counts"]["dtype"] == "integer"
    spectrum = descriptors["spec_spectrum"]["data_keys"]["spec_spectrum"]
    assert (spectrum["dtype"], spectrum["shape"], spectrum["units"]) == ("array", [4], "a.u.")
    by_desc = {d["uid"]: d["name"] for d in docs.of("descriptor")}
    peaks = [
        e["data"]["spec_peak"] for e in docs.of("event") if by_desc[e["descriptor"]] == "spec_peak"
    ]
    assert peaks == [501.0 + i for i in range(len(peaks))]  # every poll, in order
    (stop,) = docs.of("stop")
    assert sum(stop["num_events"].values()) == len(docs.of("event"))


def test_rotation_by_time_and_on_request():
    dist = DataDistributor()
    docs = Documents()
    bridge = MeasurementBridge(dist, docs, rotate_every_s=0.2)
    bridge.start()
    try:
        dist.publish(Measurement.now("probe", "v", 1.0, "V"))
        assert wait_until(lambda: len(docs.of("stop")) == 1, timeout=5)  # closed after 0.2 s
        assert "rotated after 0.2 s" in docs.of("stop")[0]["reason"]
        time.sleep(0.3)
        assert len(docs.of("start")) == 1  # no empty runs while nothing is measured
        dist.publish(Measurement.now("probe", "v", 2.0, "V"))
        assert wait_until(lambda: len(docs.of("start")) == 2)
        bridge.rotate()
        assert wait_until(lambda: len(docs.of("stop")) == 2)
        assert docs.of("stop")[1]["reason"] == "rotated on request"
    finally:
        bridge.stop()
    docs.validate()
    assert [e["data"]["probe_v"] for e in docs.of("event")] == [1.0, 2.0]


def test_unit_change_starts_a_new_run_and_metadata_is_kept():
    dist = DataDistributor()
    docs = Documents()
    with MeasurementBridge(dist, docs, instruments=["meter"]):
        dist.publish(Measurement.now("meter", "power", 1e-6, "W"))
        dist.publish(Measurement.now("meter", "power", float("nan"), "W", status="OVER"))
        dist.publish(Measurement.now("meter", "power", -30.0, "dBm"))
        dist.publish(Measurement.now("other", "x", 1.0, ""))  # not an instrument we record
        assert wait_until(lambda: len(docs.of("event")) == 3)
    docs.validate()
    assert len(docs.of("start")) == 2
    first_stop = docs.of("stop")[0]
    assert "changed from W to dBm" in first_stop["reason"]
    units = [d["data_keys"]["meter_power"]["units"] for d in docs.of("descriptor")]
    assert units == ["W", "dBm"]
    meta = [e["data"]["meter_power_metadata"] for e in docs.of("event")]
    assert meta[0] == "" and json.loads(meta[1]) == {"status": "OVER"}


def test_drops_are_counted_and_written_into_the_stop_document():
    dist = DataDistributor()
    release = threading.Event()
    docs = Documents()

    def slow_writer(name, doc):
        if name == "event":
            release.wait(5)
        docs(name, doc)

    bridge = MeasurementBridge(dist, slow_writer, queue_size=10)
    bridge.start()
    for i in range(200):
        dist.publish(Measurement.now("probe", "v", float(i), "V"))
    release.set()
    stats = bridge.stop()
    assert stats.dropped > 0
    assert stats.events + stats.dropped == 200
    (stop,) = docs.of("stop")
    assert f"{stats.dropped} measurements were dropped" in stop["reason"]


def test_writer_errors_are_counted_not_fatal():
    dist = DataDistributor()
    calls = []

    def broken(name, doc):
        calls.append(name)
        raise OSError("disk full")

    bridge = MeasurementBridge(dist, broken)
    bridge.start()
    dist.publish(Measurement.now("probe", "v", 1.0, "V"))
    assert wait_until(lambda: "event" in calls)
    stats = bridge.stop()
    assert stats.writer_errors >= 3 and "disk full" in stats.last_writer_error


def test_bad_arguments_are_config_errors():
    dist = DataDistributor()
    with pytest.raises(ConfigError, match="LegacyRuntime or a DataDistributor"):
        MeasurementBridge(object(), print)
    with pytest.raises(ConfigError, match="callable"):
        MeasurementBridge(dist, "catalog")
    with pytest.raises(ConfigError, match="rotate_every_s"):
        MeasurementBridge(dist, print, rotate_every_s=0)
    with pytest.raises(ConfigError, match="max_events_per_run"):
        MeasurementBridge(dist, print, max_events_per_run=1.5)
    with pytest.raises(ConfigError, match="list of ids"):
        MeasurementBridge(dist, print, instruments="meter")
    rt = LegacyRuntime()
    rt.add(Spectrometer(), 0)
    with pytest.raises(ConfigError, match="no such legacy instrument"):
        MeasurementBridge(rt, print, instruments=["nope"])
