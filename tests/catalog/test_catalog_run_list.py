"""Listing runs cheaply: with plain containers (through a Tiled server or from the files), and
a quiet embedded open.

``open_run_list`` is what ``daqbridge catalog list`` uses (through the lab's catalog server while
a lab is up, from the files otherwise); it must list exactly what ``open_catalog`` lists, without
importing the Bluesky run clients. Each import check runs in a fresh interpreter: what a process
imported belongs to that process.
"""

from __future__ import annotations

import json
import subprocess
import sys

from daqbridge.catalog import open_catalog, open_run_list

from .test_catalog_serve import API_KEY, scanned, server  # noqa: F401 - fixtures

CHILD_TIMEOUT = 180.0  # a cold import of Tiled on two loaded cores

_LIST_IN_A_CHILD = """
import json, sys
from daqbridge.catalog import open_run_list

url, key, directory = sys.argv[1:4]
served = url != "embedded"
with open_run_list(url if served else None, key if served else None, directory) as catalog:
    runs = catalog.runs(10)
heavy = ["bluesky_tiled_plugins", "xarray"]
heavy += ["dask", "tiled.server", "tiled.catalog"] if served else []  # the files need those
print(json.dumps({
    "uids": [run.uid for run in runs],
    "imported": [name for name in heavy if name in sys.modules],
}))
"""

_OPEN_IN_A_CHILD = """
import sys
from daqbridge.catalog import open_catalog

with open_catalog(sys.argv[1], readonly=True, recover=False) as catalog:
    print(len(catalog.runs(5)), "runs")
"""


def test_a_run_list_through_a_server_is_the_run_list_of_the_files(scanned, server):  # noqa: F811
    directory, runs = scanned
    with open_catalog(directory, readonly=True, recover=False) as files:
        expected = files.runs(10)
    with open_run_list(server, API_KEY, directory) as served:
        listed = served.runs(10)
    assert [run.scan_id for run in expected] == sorted(runs, reverse=True)  # newest first
    assert listed == expected


def test_a_run_list_of_the_files_is_the_run_list_of_open_catalog(scanned):  # noqa: F811
    directory, _ = scanned
    with open_catalog(directory, readonly=True, recover=False) as files:
        expected = files.runs(10)
    with open_run_list(None, None, directory) as listed:
        assert listed.runs(10) == expected


def _list_in_a_child(url: str, key: str, directory, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _LIST_IN_A_CHILD, url, key, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_run_list_through_a_server_imports_no_bluesky_run_clients(scanned, server, child_env):  # noqa: F811
    directory, runs = scanned
    seen = _list_in_a_child(server, API_KEY, directory, child_env)
    assert seen["uids"] == [runs[scan_id][0] for scan_id in sorted(runs, reverse=True)]
    assert seen["imported"] == []


def test_a_run_list_of_the_files_imports_no_bluesky_run_clients(scanned, child_env):  # noqa: F811
    directory, runs = scanned
    seen = _list_in_a_child("embedded", "", directory, child_env)
    assert seen["uids"] == [runs[scan_id][0] for scan_id in sorted(runs, reverse=True)]
    assert seen["imported"] == []


def test_the_embedded_catalog_opens_without_the_tiled_server_greeting(scanned, child_env):  # noqa: F811
    """No caller needs to silence Tiled's in-process server before opening the catalog (which
    made ``daqbridge run`` import it on the main thread, before the instruments started)."""
    directory, runs = scanned
    result = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_A_CHILD, str(directory)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{len(runs)} runs"
    assert "Tiled version" not in result.stderr, result.stderr
