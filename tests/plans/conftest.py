"""The simulated lab (profiles/sim.toml) started once for all plan tests.

Start-up costs seconds (the catalog, every simulator, both driver stacks), so one runtime serves
the whole package; each test collects its own documents and leaves the lab as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bluesky.plan_stubs as bps
import pytest

from daqbridge.legacy import Command
from tests.plans.support import Documents


@pytest.fixture(scope="package")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from daqbridge.runtime import Runtime

    data = tmp_path_factory.mktemp("plans-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAQBRIDGE_DATA", str(data))
        rt = Runtime.from_profile(None, connect_timeout=15.0)
        try:
            assert rt.data_dir == data
            rt.sd.baseline = []  # the plans' own events; the baseline: tests/runtime/test_baseline
            # The lab's routine before a measurement: emission on, the meter's attenuator in
            # (the laser's watts are far above the 1830-C's highest range without it).
            result = rt.legacy.submit("sim_laser", Command.execute("on"), timeout=10)
            assert result.ok, result.message
            rt.RE(bps.mv(rt["sim_meter"].attenuator, 1))  # a native ophyd-async meter
            yield rt
        finally:
            report = rt.close()
            assert report.clean, report.format()


@pytest.fixture
def docs(runtime: Any) -> Iterator[Documents]:
    collected = Documents(runtime.RE)
    try:
        yield collected
    finally:
        collected.close()
