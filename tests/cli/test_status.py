"""``daqbridge status`` on the embedded simulated lab, as a real process."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_prints_ports_and_stacks(lab_runs):
    code, out, err = lab_runs["status"].result()
    assert code == 0, err
    assert "Traceback" not in err
    assert "ports:" in out
    assert "sim://esp300?name=sim_stage" in out and "sim://newport1830c?name=sim_meter" in out
    assert "legacy stack: running" in out
    assert "sim_meter_legacy" in out
    assert f"catalog: {lab_runs['status'].data}" in out
    assert "shutdown (daqbridge status): clean" in out
