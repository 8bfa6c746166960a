"""``daqbridge catalog serve`` as a real subprocess, read by a real Tiled HTTP client."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from daqbridge.catalog import DATA_ENV, open_catalog

API_KEY = "servetestkey0123"
START_TIMEOUT = 120  # Tiled's import and app build under a loaded 2-core machine


@pytest.fixture(scope="module")
def scanned(template_dir, tmp_path_factory):
    """A data directory holding two scans; returns (data dir, {scan_id: (uid, events)})."""
    directory = tmp_path_factory.mktemp("serve") / "data"
    shutil.copytree(template_dir, directory, ignore=shutil.ignore_patterns("wal"))
    runs: dict[int, tuple[str, list[dict]]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATA_ENV, raising=False)
        with open_catalog(directory) as catalog:
            RE = RunEngine({}, context_managers=[])
            RE.subscribe(catalog.writer)
            for num in (5, 3):
                events: list[dict] = []
                token = RE.subscribe(lambda n, d, ev=events: ev.append(d) if n == "event" else 0)
                (uid,) = RE(bp.scan([det], motor, -1, 1, num))
                RE.unsubscribe(token)
                runs[RE.md["scan_id"]] = (uid, events)
            catalog.flush(timeout=60)
    return directory, runs


@pytest.fixture
def server(scanned) -> Iterator[str]:
    """The server's URL, once it has printed that it serves; the process is ended afterwards."""
    directory, _ = scanned
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daqbridge", "catalog", "serve", "--data", str(directory)]
        + ["--port", "0", "--api-key", API_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        url = None
        while url is None:
            line = lines.get(timeout=START_TIMEOUT)
            assert line is not None, "server exited before serving:\n" + "".join(seen)
            seen.append(line)
            match = re.search(r"from_uri\('(http://127\.0\.0\.1:\d+)'", line)
            url = match.group(1) if match else None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_served_catalog_reads_as_bluesky_runs(scanned, server):
    from tiled.client import from_uri
    from tiled.queries import Key

    _, runs = scanned
    client = from_uri(server, api_key=API_KEY)
    (first_scan, (first_uid, first_events)), (last_scan, (last_uid, _)) = sorted(runs.items())

    assert client[-1].metadata["start"]["uid"] == last_uid  # needs the CatalogOfBlueskyRuns spec
    found = client.search(Key("scan_id") == first_scan)
    assert list(found) == [first_uid]
    primary = found[first_uid]["primary"].read()
    assert primary["det"].values.tolist() == pytest.approx([e["data"]["det"] for e in first_events])
    assert primary["motor"].values.tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])


def test_wrong_api_key_is_refused(server):
    from tiled.client import from_uri

    with pytest.raises(Exception, match="requires API key authentication"):
        from_uri(server, api_key="not-the-key")[-1]


def test_missing_catalog_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "daqbridge", "catalog", "serve", "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != DATA_ENV},
    )
    assert proc.returncode == 1
    assert "there is no catalog in" in proc.stderr and "Traceback" not in proc.stderr
    assert not Path(tmp_path / "none").exists()


def test_api_key_tiled_would_refuse_is_a_clear_error(scanned):
    directory, _ = scanned
    proc = subprocess.run(
        [sys.executable, "-m", "daqbridge", "catalog", "serve", "--data", str(directory)]
        + ["--port", "0", "--api-key", "has-dashes"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != DATA_ENV},
    )
    assert proc.returncode == 1
    assert "letters and digits only" in proc.stderr and "Traceback" not in proc.stderr
