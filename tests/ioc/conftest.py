"""One IOC subprocess (the simulated lab) shared by the tests of this directory.

The IOC runs on 127.0.0.1 with a CA server port and a repeater port chosen per test run, and
writes its data (catalog, frames) into a temporary DAQBRIDGE_DATA. The test process is the CA
client: ophyd picks caproto as its control layer here (pyepics is not installed;
``ophyd.set_cl('caproto')`` makes it explicit), and caproto reads the EPICS variables ONCE, when
its shared client context is made, so they are put into os.environ before the first PV exists
and restored afterwards. A client context made earlier with other settings is replaced.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daqbridge.ioc import READY, free_port, ioc_command, loopback_ca_env, spawn
from tests.devices.conftest import RE  # noqa: F401 - a fixture, found by name

PREFIX = "DAQT:"
READY_TIMEOUT = 180.0  # the whole simulated lab starts first; 2 shared cores can be slow


@pytest.fixture(scope="session")
def ca_ports() -> dict[str, str]:
    """The CA environment of this test run, set in this process for the client side."""
    server, repeater = free_port(), free_port()
    while repeater == server:
        repeater = free_port()
    env = loopback_ca_env(server, repeater)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import ophyd
    from caproto.threading import pyepics_compat

    ophyd.set_cl("caproto")
    if pyepics_compat._make_context.cache_info().currsize:
        ctx = pyepics_compat._make_context()
        if str(ctx.broadcaster.ca_server_port) != env["EPICS_CA_SERVER_PORT"]:
            pyepics_compat._make_context.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ioc(ca_ports: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """``daqbridge ioc serve`` on the simulated lab, prefix DAQT:, polling every 0.5 s."""
    data = tmp_path_factory.mktemp("ioc-data")
    stderr = str(data / "ioc.stderr")
    env = {**ca_ports, "DAQBRIDGE_DATA": str(data)}
    proc = spawn(
        ioc_command("--prefix", PREFIX, "--poll-period", "0.5", "--connect-timeout", "30", "-v"),
        env=env,
        ready=READY,
        timeout=READY_TIMEOUT,
        stderr_path=stderr,
    )
    proc.data_dir = Path(data)  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        code = proc.stop(timeout=30)
        if code != 0:
            sys.stderr.write(f"IOC exited with {code}; stderr:\n{proc.stderr_text()[-3000:]}\n")


@pytest.fixture
def ca_context(ca_ports: dict[str, str]) -> Iterator:
    """A fresh caproto threading client (its own TCP circuit to the IOC)."""
    from caproto.threading.client import Context

    ctx = Context()
    try:
        yield ctx
    finally:
        ctx.disconnect()


def caput(pv: str, value, *, timeout: float = 10.0):
    """A put with completion that raises on the IOC's refusal (caproto.sync's client does;
    the threading client only logs a refused put-completion)."""
    from caproto.sync.client import write

    return write(pv, value, notify=True, repeater=False, timeout=timeout)


def caget(pv: str, *, timeout: float = 10.0, data_type=None):
    from caproto.sync.client import read

    kwargs = {} if data_type is None else {"data_type": data_type}
    return read(pv, repeater=False, timeout=timeout, **kwargs)
