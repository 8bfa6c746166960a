"""The example legacy configuration: parsed as shipped, then run against the three simulators."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

from daqbridge.legacy import Command, LegacyConfig, LegacyRuntime, load_legacy_config
from daqbridge.sim import serve_pty
from daqbridge.transport import SerialPortPool
from tests.legacy.legacy_test_instruments import wait_until

EXAMPLE = Path(__file__).with_name("legacy_lab.toml")


def test_example_file_parses():
    cfg = load_legacy_config(EXAMPLE)
    assert list(cfg.instruments) == ["power_meter", "rotators", "laser"]
    meter, mounts, laser = cfg.instruments.values()
    assert meter.type == "newport_1830c" and meter.options["wavelength_nm"] == 800
    assert meter.options["filter"] == "medium" and meter.polling_rate_hz == 5
    assert mounts.options["device_addresses"] == [2, 3] and mounts.baud_rate == 9600
    assert laser.options["terminator"] == "LF" and laser.options["timeout_s"] == 2.0
    assert cfg.runtime.restart_max_s == 5


def test_example_lab_runs_on_simulators():
    cfg = load_legacy_config(EXAMPLE)
    with (
        serve_pty("newport1830c", noise=0, input_power=5e-7, speed=100) as meter,
        serve_pty("elliptec", addresses=[2, 3], speed=20) as mounts,
        serve_pty("maitai", warmed_up=True, speed=20) as laser,
        SerialPortPool() as pool,
    ):
        paths = {"power_meter": meter.path, "rotators": mounts.path, "laser": laser.path}
        fast = {"power_meter": 20, "rotators": 10, "laser": 10}
        cfg = LegacyConfig(
            cfg.source,
            MappingProxyType(
                {
                    k: dataclasses.replace(v, port=paths[k], polling_rate_hz=fast[k])
                    for k, v in cfg.instruments.items()
                }
            ),
            cfg.runtime,
        )
        rt = LegacyRuntime.from_config(cfg, pool)
        feed = rt.distributor.subscribe(name="lab", maxsize=10_000)
        rt.start()
        try:
            assert rt.wait_running(15), rt.health()
            seen: set[tuple[str, str]] = set()

            def collect() -> bool:
                seen.update((m.instrument_id, m.channel) for m in feed.drain())
                return len(seen) >= 7

            assert wait_until(collect, 10), seen
            assert seen >= {
                ("power_meter", "power"),
                ("rotators", "position_2"),
                ("rotators", "position_3"),
                ("laser", "wavelength"),
                ("laser", "power"),
                ("laser", "shutter"),
                ("laser", "warmup"),
            }
            assert rt.submit("rotators", Command.set("position_3", 22.5), timeout=15).ok
            assert mounts.simulator.position_deg(3) == 22.5
            for server in (meter, mounts, laser):
                assert server.simulator.protocol_errors == []
        finally:
            assert rt.stop_timeout == 5 and rt.stop()
