"""Plans queued on a bluesky queue server whose worker runs the daqbridge runtime.

Redis (Debian's redis-server; tests/runtime/install_redis.sh installs it) and the RE Manager
(``start-re-manager`` from bluesky-queueserver) run on free loopback ports; the client is
bluesky-queueserver-api over 0MQ. The worker's start-up code is profiles/ipython/startup when
that directory has Python start-up files, else tests/runtime/qserver_startup. The worker's
runtime writes into the catalog in DAQBRIDGE_DATA, where the test then finds the run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daqbridge.ioc import free_port

pytest.importorskip("bluesky_queueserver", reason="bluesky-queueserver is not installed")
pytest.importorskip("bluesky_queueserver_api", reason="bluesky-queueserver-api is not installed")

REPO = Path(__file__).resolve().parents[2]
SHARED_STARTUP = REPO / "profiles" / "ipython" / "startup"
TEST_STARTUP = Path(__file__).with_name("qserver_startup")
ENV_OPEN_TIMEOUT = 240.0  # the worker starts the whole simulated lab
PLAN_TIMEOUT = 120.0
TEST_TIMEOUT = ENV_OPEN_TIMEOUT + PLAN_TIMEOUT + 240.0
"""The whole test's bound: its own waits (environment open, the queue, closing, the catalog) plus
the fixtures' start-ups. It replaces pytest-timeout's global 120 s, which on a loaded 2-core
machine ran out while the worker was still starting the lab inside the 240 s this test allows
for that (idle, the environment opens in about 9 s and the three plans run in about 3 s)."""


def _startup_dir(tmp_path: Path) -> tuple[Path, bool]:
    """A copy of the start-up files (the manager writes its plan/device list next to them),
    and whether they are the shared IPython profile's (which then needs a real IPython kernel
    in the worker: its magics call get_ipython())."""
    shared = SHARED_STARTUP.is_dir() and any(SHARED_STARTUP.glob("*.py"))
    source = SHARED_STARTUP if shared else TEST_STARTUP
    # an IPython kernel worker wants <ipython dir>/profile_<name>/startup
    target = tmp_path / "ipython" / "profile_daqbridge" / "startup"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    if not (target / "user_group_permissions.yaml").exists():
        shutil.copy(TEST_STARTUP / "user_group_permissions.yaml", target)
    return target, shared


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture
def redis_server(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip(
            "redis-server is not installed (the queue server keeps its queue in Redis); "
            "run tests/runtime/install_redis.sh"
        )
    port = free_port()
    log = tmp_path / "redis.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(tmp_path), "--protected-mode", "yes",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        _wait_port(port, proc, 30, "redis-server", log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def re_manager(redis_server, tmp_path, monkeypatch):
    exe = Path(sys.executable).with_name("start-re-manager")
    if not exe.exists():
        pytest.skip("start-re-manager (bluesky-queueserver) is not installed")
    data = tmp_path / "data"
    monkeypatch.setenv("DAQBRIDGE_DATA", str(data))
    control, info = free_port(), free_port()
    startup, shared = _startup_dir(tmp_path)
    kernel = ["--use-ipython-kernel", "ON", "--ipython-kernel-ip", "127.0.0.1"] if shared else []
    log = tmp_path / "re_manager.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(exe),
                "--startup-dir", str(startup),
                "--redis-addr", redis_server,
                "--redis-name-prefix", f"daqbridge_test_{control}",
                "--zmq-control-addr", f"tcp://127.0.0.1:{control}",
                "--zmq-info-addr", f"tcp://127.0.0.1:{info}",
                "--zmq-publish-console", "ON",
                "--ignore-invalid-plans", "ON",
                "--user-group-permissions", str(startup / "user_group_permissions.yaml"),
                *kernel,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        _wait_port(control, proc, 60, "start-re-manager", log)
        yield {
            "control": f"tcp://127.0.0.1:{control}",
            "info": f"tcp://127.0.0.1:{info}",
            "data": data,
            "log": log,
        }
    finally:
        _stop(proc, timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_queued_scan_runs_in_the_worker_and_lands_in_the_catalog(re_manager):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI

    from daqbridge.catalog import open_catalog

    RM = REManagerAPI(zmq_control_addr=re_manager["control"], zmq_info_addr=re_manager["info"])
    try:
        RM.wait_for_idle(timeout=30)  # the manager answers
        RM.environment_open()
        try:
            RM.wait_for_idle(timeout=ENV_OPEN_TIMEOUT)
        except Exception:
            pytest.fail(
                f"the worker environment did not open: {re_manager['log'].read_text()[-3000:]}"
            )
        status = RM.status()
        assert status["worker_environment_exists"], re_manager["log"].read_text()[-3000:]
        assert "sim_stage_x" in RM.devices_allowed()["devices_allowed"]
        if "scan" not in RM.plans_allowed()["plans_allowed"]:
            # the IPython profile offers bluesky's plans as bp.*, which a queue lists only by
            # top-level name: bring the two the test needs into the worker's namespace
            reply = RM.script_upload("from bluesky.plans import count, scan\n")
            RM.wait_for_completed_task(reply["task_uid"], timeout=60)
        assert "scan" in RM.plans_allowed()["plans_allowed"]

        allowed = RM.plans_allowed()["plans_allowed"]
        assert "polarization_scan" in allowed, sorted(allowed)  # a daqbridge plan validates
        assert "fly_raster" in allowed, sorted(allowed)
        RM.item_add(BPlan("scan", ["sim_meter"], "sim_stage_x", -1, 1, 3))
        RM.item_add(BPlan("polarization_scan", "sim_rotators_a", "sim_meter", [0, 45, 90]))
        RM.item_add(
            BPlan("fly_raster", "sim_stage_x", "sim_stage_y", "sim_meter", [-1, 1, 3], [0, 1, 2])
        )
        RM.queue_start()
        RM.wait_for_idle(timeout=PLAN_TIMEOUT)
        scan_item, polarization_item, fly_item = RM.history_get()["items"][-3:]
        assert fly_item["result"]["exit_status"] == "completed", (
            fly_item["result"].get("msg"),
            fly_item["result"].get("traceback"),
        )
        result = scan_item["result"]
        assert result["exit_status"] == "completed", result
        (uid,) = result["run_uids"]
        assert polarization_item["result"]["exit_status"] == "completed", (
            polarization_item["result"].get("msg"),
            polarization_item["result"].get("traceback"),
        )
        (pol_uid,) = polarization_item["result"]["run_uids"]

        RM.environment_close()
        RM.wait_for_idle(timeout=60)
    finally:
        RM.close()

    # the worker's runtime wrote to the catalog in DAQBRIDGE_DATA: find the run there
    catalog = open_catalog(re_manager["data"], readonly=True)
    try:
        deadline = time.monotonic() + 30
        while uid not in catalog and time.monotonic() < deadline:
            time.sleep(0.5)
        run = catalog[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        data = run["primary"].read()
        assert list(data["sim_stage_x"].values) == [-1.0, 0.0, 1.0]
        assert len(data["sim_meter_power"]) == 3
        while pol_uid not in catalog and time.monotonic() < deadline:
            time.sleep(0.5)
        pol = catalog[pol_uid]
        assert pol.metadata["start"]["plan_name"] == "polarization_scan"
        assert list(pol["primary"].read()["sim_rotators_a"].values) == [0.0, 45.0, 90.0]
    finally:
        catalog.close()
