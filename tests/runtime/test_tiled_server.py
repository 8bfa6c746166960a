"""A lab whose profile points ``catalog_uri`` at a Tiled server (the multi-machine data path).

A real ``tiled serve catalog --temp`` runs on 127.0.0.1 with an API key; the runtime writes a
scan to it through the crash-safe writer, and a separate client reads the run back from the
server, as an analysis machine would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from daqbridge.ioc import free_port

API_KEY = "daqbridgetest" + uuid.uuid4().hex  # tiled: alphanumeric only
START_TIMEOUT = 90.0


def _tiled_command() -> list[str]:
    exe = Path(sys.executable).with_name("tiled")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tiled")
    if found is None:
        pytest.skip("the `tiled` command (tiled[server]) is not installed")
    return [found]


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    """``tiled serve catalog --temp`` on a free loopback port; killed at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("tiled") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                *_tiled_command(),
                "serve", "catalog", "--temp",
                "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tiled exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/api/v1/", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tiled did not answer within {START_TIMEOUT} s: {log.read_text()}")
            time.sleep(0.2)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _profile(tmp_path: Path, uri: str) -> Path:
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "lab.toml"
    path.write_text(
        f"""
[lab]
name = "lab writing to a Tiled server"
data_dir = "data"
catalog_uri = "{uri}"
catalog_api_key = "env:DAQBRIDGE_TEST_TILED_KEY"

[simulation]
enabled = true
speed = 50.0

[[instruments]]
id = "stage"
driver = "esp300"
port = "sim://esp300?name=tiled_stage_{tag}"

[instruments.esp300]
axes = [{{ number = 1, name = "x", units = "mm", low_limit = -5.0, high_limit = 5.0 }}]

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "sim://newport1830c?name=tiled_meter_{tag}"
"""
    )
    return path


@pytest.mark.slow
def test_runtime_writes_to_a_tiled_server_and_a_client_reads_it_back(
    tiled_server, tmp_path, monkeypatch
):
    import bluesky.plans as bp

    from daqbridge.catalog import open_catalog
    from daqbridge.runtime import Runtime

    monkeypatch.setenv("DAQBRIDGE_TEST_TILED_KEY", API_KEY)
    monkeypatch.setenv("DAQBRIDGE_DATA", str(tmp_path / "data"))
    rt = Runtime.from_profile(_profile(tmp_path, tiled_server), connect_timeout=20)
    try:
        assert rt.catalog.uri == tiled_server
        (uid,) = rt.RE(bp.scan([rt["meter"]], rt["stage_x"], -1, 1, 3))
    finally:
        report = rt.close()
    assert report.clean, report.format()
    # the write-ahead log stays on the lab machine; the run is on the server
    assert (tmp_path / "data" / "wal").is_dir()

    reader = open_catalog(tmp_path / "reader", uri=tiled_server, api_key=API_KEY, readonly=True)
    try:
        run = reader[uid]
        assert run.metadata["start"]["plan_name"] == "scan"
        assert run.metadata["stop"]["exit_status"] == "success"
        data = run["primary"].read()
        assert list(data["stage_x"].values) == [-1.0, 0.0, 1.0]
        assert len(data["meter_power"]) == 3
        assert uid in {summary.uid for summary in reader.runs(limit=5)}
    finally:
        reader.close()


def test_a_wrong_api_key_is_a_clear_catalog_error(tiled_server, tmp_path):
    from daqbridge.catalog import open_catalog
    from daqbridge.errors import CatalogError

    with pytest.raises(CatalogError, match="Tiled server"):
        open_catalog(tmp_path, uri=tiled_server, api_key="not-the-key", readonly=True)
