"""``daqbridge lab up`` starts the panel with the lab and ``lab down`` stops it.

Named to run last in tests/web/: it brings the package's shared lab down.
"""

from __future__ import annotations

import json

import pytest

from daqbridge.cli._lab import LabProcess

pytestmark = pytest.mark.slow


def test_lab_up_started_the_panel_and_lab_down_stops_it(lab, panel):
    assert panel.get("api/config")["lab"]["data_dir"] == str(lab.data)
    record = json.loads((lab.data / "lab" / "web.json").read_text())
    process = LabProcess(record["pid"], record["start_time"], record["log"])
    assert process.alive() and record["url"] == panel.url

    down = lab.cli("lab", "down", "--profile", str(lab.profile))
    assert down.returncode == 0, down.stderr
    assert f"web panel (pid {process.pid}) stopped" in down.stderr
    assert not process.alive()
    assert not (lab.data / "lab" / "web.json").exists()
