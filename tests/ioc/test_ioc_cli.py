"""``daqbridge ioc serve`` as a command: listing, bad arguments, read-only serving, shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daqbridge.ioc import READY, free_port, ioc_command, loopback_ca_env, spawn
from tests.ioc.test_ioc_motor import EPICS_MOTOR_FIELDS

SMALL_LAB = str(Path(__file__).with_name("small_lab.toml"))
PREFIX = "DAQS:"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 180.0):
    return subprocess.run(
        ioc_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_list_pvs_prints_every_pv_and_exits(tmp_path):
    result = _run(
        "--profile", SMALL_LAB, "--prefix", PREFIX, "--list-pvs",
        env={"DAQBRIDGE_DATA": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    names = set(result.stdout.split())
    for field in EPICS_MOTOR_FIELDS:
        assert f"{PREFIX}stage_x.{field}" in names
    for pv in ("stage_x", "meter:power", "meter:wavelength", "meter:Trigger", "ioc:Heartbeat"):
        assert PREFIX + pv in names
    assert all(name.startswith(PREFIX) for name in names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interfaces", "not-an-address"], "is not an IP address"),
        (["--port", "70000"], "is not a TCP/UDP port number"),
        (["--prefix", "A B:"], "is not usable"),
        (["--prefix", "A.B:"], "is not usable"),
        (["--poll-period", "-1"], "must be >= 0"),
        (["--profile", "/nonexistent/lab.toml"], "lab.toml"),
    ],
)
def test_bad_arguments_are_refused_before_the_lab_starts(args, message, tmp_path):
    result = _run(*args, env={"DAQBRIDGE_DATA": str(tmp_path)}, timeout=60)
    assert result.returncode == (2 if args[0] == "--profile" else 1)  # a path typed wrong: 2
    assert "daqbridge: error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing was started or written


@pytest.mark.slow
def test_read_only_ioc_then_ordered_shutdown(tmp_path, monkeypatch):
    from caproto import ErrorResponseReceived
    from caproto.sync.client import read, write

    port, repeater = free_port(), free_port()
    env = {**loopback_ca_env(port, repeater), "DAQBRIDGE_DATA": str(tmp_path)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the sync client reads them at every call
    stderr = str(tmp_path / "ioc.stderr")
    proc = spawn(
        ioc_command("--profile", SMALL_LAB, "--prefix", PREFIX, "--read-only", "-v"),
        env=env,
        ready=READY,
        timeout=180,
        stderr_path=stderr,
    )
    try:
        assert f"prefix {PREFIX} on 127.0.0.1:{port}" in proc.ready_line
        assert read(f"{PREFIX}stage_x.RBV", repeater=False, timeout=10).data[0] == 0.0
        with pytest.raises((ErrorResponseReceived, PermissionError, Exception)):
            write(f"{PREFIX}stage_x", [1.0], notify=True, repeater=False, timeout=10)
        assert read(f"{PREFIX}stage_x", repeater=False, timeout=10).data[0] == 0.0
    finally:
        code = proc.stop(timeout=60)
    assert code == 0, proc.stderr_text()[-3000:]
    log = proc.stderr_text()
    assert "Traceback" not in log
    order = [log.find(f"shutdown phase {phase}") for phase in ("native", "resources", "simulators")]
    assert -1 not in order and order == sorted(order), log[-3000:]
    assert "shutdown (ioc shutdown): clean" in log


def test_interfaces_other_than_loopback_get_no_loopback_beacons():
    from daqbridge.ioc import ca_environment

    env: dict[str, str] = {}
    ca_environment(["127.0.0.1"], 5999, environ=env)
    assert env["EPICS_CAS_BEACON_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] == "NO"
    assert env["EPICS_CA_SERVER_PORT"] == "5999"
    env = {"EPICS_CAS_BEACON_ADDR_LIST": "10.0.0.255"}
    ca_environment(["127.0.0.1"], environ=env)
    assert env["EPICS_CAS_BEACON_ADDR_LIST"] == "10.0.0.255"  # the user's choice is kept
    env = {}
    ca_environment(["192.168.1.20"], environ=env)
    assert env == {"EPICS_CAS_INTF_ADDR_LIST": "192.168.1.20"}


def test_cli_help_lists_the_serve_options():
    result = subprocess.run(
        [sys.executable, "-m", "daqbridge", "ioc", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for option in ("--profile", "--prefix", "--interfaces", "--port", "--list-pvs", "--read-only"):
        assert option in result.stdout
