"""Checked before start, the right thing blamed, and the exit status of a mistake (issue 15).

Every process gets a fresh HOME and no DAQBRIDGE_DATA / DAQBRIDGE_PROFILE. The servers are real:
a port on 127.0.0.1 that was bound and closed (so it refuses), a stock ``tiled serve catalog``
with an API key, and a plain HTTP server that is not Tiled. pyvcam is not installed here, so
its import really fails; tests/devices/fake_pyvcam, put on the path, is what a lab with the SDK
would have.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daqbridge.ioc import free_port

from .conftest import Cli, child_env, daqbridge_argv

pytestmark = pytest.mark.ci_short

FAKE_PYVCAM = Path(__file__).parents[1] / "devices" / "fake_pyvcam"
API_KEY = "preflight" + uuid.uuid4().hex  # tiled: letters and digits only
SERVER_START = 90.0
"""Seconds a stock Tiled server may take to answer on a loaded machine (a bound, not a pause)."""


def home_env(home: Path, **extra: str) -> dict[str, str]:
    env = child_env(None, HOME=str(home), **extra)
    env.pop("XDG_DATA_HOME", None)
    env.pop("TILED_API_KEY", None)
    return env


def daqbridge(home: Path, *args: str, **extra: str) -> tuple[int, str, str]:
    return Cli(daqbridge_argv(*args), home_env(home, **extra), cwd=home).result()


def refused_port() -> int:
    """A port on 127.0.0.1 that refuses: bound (so nobody else had it), then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meter_profile(home: Path, lab: str = "") -> Path:
    """One simulated power meter; ``lab`` adds lines to [lab]."""
    path = home / "lab.toml"
    path.write_text(
        f"""
[lab]
name = "preflight lab"
data_dir = "data"
{lab}

[simulation]
enabled = true

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "sim://newport1830c?name=preflight_meter_{uuid.uuid4().hex[:8]}"
"""
    )
    return path


# --- a Tiled server that refuses ----------------------------------------------------------------


def test_run_with_a_refused_tiled_server_exits_2_before_anything_starts(tmp_path):
    uri = f"http://127.0.0.1:{refused_port()}"
    profile = meter_profile(tmp_path, f'catalog_uri = "{uri}"')
    code, out, err = daqbridge(
        tmp_path, "run", "count", "meter", "num=1", "--profile", str(profile)
    )
    assert code == 2, err
    assert f"cannot connect to the Tiled server {uri}: Connection refused" in err, err
    assert "lab.catalog_uri" in err and "Fix:" in err
    # Nothing was started, so nothing was shut down, nothing forced, no run.
    assert "shutdown (" not in err and "NOT clean" not in err and "uid:" not in out, err
    assert "Traceback" not in err


def test_config_check_blames_the_refused_server_and_offline_skips_it(tmp_path):
    uri = f"http://127.0.0.1:{refused_port()}"
    profile = meter_profile(tmp_path, f'catalog_uri = "{uri}"')
    code, out, err = daqbridge(tmp_path, "config", "check", str(profile))
    assert code == 1, out + err
    assert f"error: lab.catalog_uri: cannot connect to the Tiled server {uri}" in err, err
    assert not out.startswith("OK")
    code, out, err = daqbridge(tmp_path, "config", "check", "--offline", str(profile))
    assert code == 0, err
    assert out.startswith("OK"), out
    assert f"the Tiled server {uri} was not contacted (--offline)" in err


def test_catalog_list_on_a_refused_server_says_so_without_retrying(tmp_path):
    uri = f"http://127.0.0.1:{refused_port()}"
    code, out, err = daqbridge(tmp_path, "catalog", "list", "--uri", uri)
    # tiled's client retried a refused connection for up to 45 s, saying "Retrying..." each time
    assert "Retrying" not in err, err
    assert code == 1, out + err
    assert "Tiled server" in err and uri in err and "Connection refused" in err, err
    assert "Traceback" not in err


# --- a live Tiled server, its API key, and a server that is not Tiled ---------------------------


def _tiled_command() -> list[str]:
    exe = Path(sys.executable).with_name("tiled")
    found = str(exe) if exe.exists() else shutil.which("tiled")
    if found is None:
        pytest.skip("the `tiled` command (tiled[server]) is not installed")
    return [found]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[str]:
    """``tiled serve catalog --temp --api-key`` on a free loopback port, until the module ends."""
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
        deadline = time.monotonic() + SERVER_START
        while not _answers(f"{uri}/api/v1/"):
            if proc.poll() is not None:
                pytest.fail(f"tiled exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tiled did not answer within {SERVER_START} s: {log.read_text()}")
            time.sleep(0.2)  # polling a process we do not control; the loop above is the wait
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_the_api_key_is_checked_missing_unset_refused_and_accepted(tmp_path, keyed_server):
    bare = meter_profile(tmp_path, f'catalog_uri = "{keyed_server}"')
    code, out, err = daqbridge(tmp_path, "config", "check", str(bare))
    assert code == 1, out + err
    assert f"the Tiled server {keyed_server} requires an API key and the profile gives none" in err
    assert 'catalog_api_key = "env:TILED_API_KEY"' in err

    keyed = meter_profile(
        tmp_path, f'catalog_uri = "{keyed_server}"\ncatalog_api_key = "env:PREFLIGHT_KEY"'
    )
    code, out, err = daqbridge(tmp_path, "config", "check", str(keyed))
    assert code == 1, out + err
    assert "error: lab.catalog_api_key:" in err
    assert "reads it from $PREFLIGHT_KEY, which is not set" in err, err

    code, out, err = daqbridge(tmp_path, "config", "check", str(keyed), PREFLIGHT_KEY="wrong0key")
    assert code == 1, out + err
    assert "refuses the API key (read from $PREFLIGHT_KEY): Invalid API key" in err, err

    code, out, err = daqbridge(tmp_path, "config", "check", str(keyed), PREFLIGHT_KEY=API_KEY)
    assert code == 0, err
    assert out.startswith("OK"), out


class _NotTiled(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<html>a lab wiki</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_web_server_that_is_not_tiled_is_named_as_such(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTiled)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        profile = meter_profile(tmp_path, f'catalog_uri = "{uri}"')
        code, out, err = daqbridge(tmp_path, "config", "check", str(profile))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1, out + err
    assert f"{uri} answers, but not as a Tiled server" in err, err
    assert "error: lab.catalog_uri:" in err


# --- this machine: a SQLite catalog's directory, instrument SDKs --------------------------------


def test_a_sqlite_catalog_below_a_file_is_an_error_at_the_key(tmp_path):
    (tmp_path / "notes.txt").write_text("not a directory\n")
    uri = f"sqlite:///{tmp_path}/notes.txt/catalog.db"
    profile = meter_profile(tmp_path, f'catalog_uri = "{uri}"')
    code, out, err = daqbridge(tmp_path, "config", "check", str(profile))
    assert code == 1, out + err
    assert f"error: lab.catalog_uri: the SQLite catalog {uri} cannot be written" in err, err
    assert "notes.txt is a regular file, not a directory" in err
    code, out, err = daqbridge(tmp_path, "run", "count", "meter", "--profile", str(profile))
    assert code == 2, err
    assert "cannot be written: its directory" in err and "shutdown (" not in err, err


CAMERA_LAB = """
[lab]
name = "camera lab"
data_dir = "data"

[[instruments]]
id = "cam"
driver = "pvcam"
camera = "PrimeBSI"
"""


def test_a_camera_on_the_real_sdk_needs_pyvcam_and_the_check_sees_it_when_present(tmp_path):
    profile = tmp_path / "camera.toml"
    profile.write_text(CAMERA_LAB)
    code, out, err = daqbridge(tmp_path, "config", "check", str(profile))
    assert code == 1, out + err
    assert "error: instruments[0].pvcam.backend: 'cam' needs the Python package 'pyvcam'" in err
    assert "pip install pyvcam" in err and 'pvcam.backend = "sim"' in err, err
    code, out, err = daqbridge(tmp_path, "run", "count", "cam", "--profile", str(profile))
    assert code == 2, err
    assert "needs the Python package 'pyvcam'" in err and "shutdown (" not in err, err
    # With the package importable (the fake stands in for the SDK) the same profile is OK.
    with_sdk = os.pathsep.join([str(FAKE_PYVCAM), home_env(tmp_path)["PYTHONPATH"]])
    code, out, err = daqbridge(tmp_path, "config", "check", str(profile), PYTHONPATH=with_sdk)
    assert code == 0, err
    assert out.startswith("OK"), out


def test_a_visa_backend_that_cannot_be_imported_is_named(tmp_path):
    """pyvisa-py is installed here; ``sys.modules[name] = None`` is Python's own way to make an
    import fail, which is what an environment without the package does."""
    profile = tmp_path / "dmm.toml"
    profile.write_text(
        """
[lab]
name = "dmm lab"
data_dir = "data"

[[instruments]]
id = "dmm"
driver = "scpi"
resource = "TCPIP0::127.0.0.1::5025::SOCKET"
scpi = { signals = [{ name = "voltage", query = "MEAS:VOLT:DC?" }] }
"""
    )
    script = (
        "import sys; sys.modules['pyvisa_py'] = None; from daqbridge.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", script, "config", "check", str(profile)]
    code, out, err = Cli(argv, home_env(tmp_path), cwd=tmp_path).result()
    assert code == 1, out + err
    assert "error: instruments[0].visa_backend: 'dmm' needs the Python package 'pyvisa_py'" in err
    assert "pip install pyvisa-py" in err, err


# --- exit status 2 for a mistake in the command ------------------------------------------------

PROFILE_COMMANDS = [
    ["run", "count", "sim_meter"],
    ["status"],
    ["shadow", "sim_meter"],
    ["catalog", "list"],
    ["hardware"],
    ["ioc", "serve"],
    ["migration", "status"],
    ["lab", "up"],
    ["config", "switch", "sim_meter", "--stack", "native"],
]


@pytest.mark.parametrize("command", PROFILE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_missing_profile_file_exits_2(tmp_path, command):
    missing = tmp_path / "no-such-lab.toml"
    code, out, err = daqbridge(tmp_path, *command, "--profile", str(missing))
    assert code == 2, out + err
    assert str(missing) in err and "not found" in err, err
    assert "Traceback" not in err


def test_an_unknown_simulator_kind_exits_2(tmp_path):
    code, out, err = daqbridge(tmp_path, "sim", "serve", "no_such_kind")
    assert code == 2, out + err
    assert "unknown simulator kind 'no_such_kind'" in err and "ready on" not in out, err


def test_a_misspelt_simulator_kind_gets_a_did_you_mean(tmp_path):
    code, out, err = daqbridge(tmp_path, "sim", "serve", "elipptec")
    assert "unknown simulator kind 'elipptec'" in err and "did you mean 'elliptec'?" in err, err
