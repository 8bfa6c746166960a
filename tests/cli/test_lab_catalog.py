"""The lab's catalog server as ``daqbridge catalog list`` and the lab commands see it, without
starting a lab: lab.json points at stand-in processes the test controls (as in test_lab.py).
The real server, reached through a real lab, is tested in test_lab.py."""

from __future__ import annotations

import json
import subprocess
import sys

from daqbridge.catalog import DATA_ENV
from daqbridge.cli import main
from daqbridge.cli._lab import find_lab, lab_catalog

from .conftest import fresh_data_dir
from .test_lab import _write_lab_file, sleepers  # noqa: F401 - a fixture


def test_a_lab_whose_catalog_server_stopped_stays_up_and_the_list_reads_the_files(
    cli_catalog_template,
    tmp_path,
    monkeypatch,
    capsys,
    sleepers,  # noqa: F811
):
    """Plans run without the catalog server: losing it must not make the next command clean
    the lab away as stale, and ``catalog list`` then reads the files."""
    start, _ = sleepers
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    _write_lab_file(data, manager=start(), documents=start())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    state = json.loads((data / "lab.json").read_text())
    state.update(
        catalog={"pid": gone.pid, "start_time": 1, "log": ""},
        catalog_addr="http://127.0.0.1:1",
        catalog_dir=str(data),
        catalog_api_key="unused",
    )
    (data / "lab.json").write_text(json.dumps(state))
    monkeypatch.setenv(DATA_ENV, str(data))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)

    assert find_lab() is not None  # still up
    assert lab_catalog(data, data) is None  # but its catalog server is not asked
    assert main(["catalog", "list"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"no runs in {data}", (out, err)
    assert (data / "lab.json").exists()
