"""What ``daqbridge run`` does on its main thread while the lab starts (a real cold run).

Tiled's server (two to three seconds to import) belongs on the runtime's catalog thread, beside
the instruments' start-up; importing it on the main thread first put those seconds in front of
everything. Python's audit hook for ``import`` runs in the importing thread, so the child
records which thread imported it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import CLI_TIMEOUT, child_env, fresh_data_dir

_RUN_AND_SAY_WHO_IMPORTED_TILED = """
import json, sys, threading

who = {}

def audit(event, args):
    if event == "import" and args[0] == "tiled.server.app" and "tiled.server.app" not in who:
        who["tiled.server.app"] = threading.current_thread().name

sys.addaudithook(audit)
from daqbridge.cli import main

rc = main(["run", "--no-lab", "count", "sim_meter", "num=1", "--no-plot"])
print(json.dumps({"rc": rc, **who}))
"""


@pytest.mark.slow
def test_a_cold_run_imports_the_tiled_server_on_the_catalog_thread(cli_catalog_template, tmp_path):
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _RUN_AND_SAY_WHO_IMPORTED_TILED],
        env=child_env(data, HOME=str(home)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["rc"] == 0, result.stderr[-3000:]
    assert seen["tiled.server.app"].startswith("daqbridge-catalog"), seen
    assert "Tiled version" not in result.stderr  # quiet all the same
