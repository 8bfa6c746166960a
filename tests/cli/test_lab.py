"""``daqbridge lab up|status|down`` and ``submit_to_lab`` on the real thing.

One lab per module (starting it is most of the module's time): Debian's redis-server, the
document proxy and bluesky-queueserver's RE Manager, whose worker starts the embedded simulated
lab, in a temporary HOME and data directory. The tests that use it run in file order and the
last one brings it down; the fixture brings it down too if a test failed before. Runs are
checked in the catalog the worker writes, read from this process.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daqbridge.catalog import DATA_ENV, open_catalog
from daqbridge.cli import main
from daqbridge.cli._lab import (
    LabError,
    LabProcess,
    _descendants,
    find_lab,
    process_start_time,
    submit_to_lab,
)

from .conftest import Cli, child_env, daqbridge_argv, fresh_data_dir

pytest.importorskip("bluesky_queueserver", reason="bluesky-queueserver is not installed")
pytest.importorskip("bluesky_queueserver_api", reason="bluesky-queueserver-api is not installed")


REDIS = shutil.which("redis-server")
NO_REDIS = (
    "redis-server is not installed (the queue server keeps its queue in Redis); "
    "run tests/runtime/install_redis.sh"
)
LAB_TIMEOUT = 300.0  # lab up starts the whole simulated lab in the worker: slow on a busy box
RUN_TIMEOUT = 120.0


class Lab:
    def __init__(self, root: Path, data: Path, env: dict[str, str]) -> None:
        self.root = root
        self.data = data
        self.env = env

    @property
    def state(self) -> dict:
        return json.loads((self.data / "lab.json").read_text())

    def cli(self, *args: str, timeout: float = LAB_TIMEOUT) -> tuple[int, str, str]:
        return Cli(daqbridge_argv(*args), self.env, cwd=self.root).result(timeout)


def _processes(state: dict) -> dict[str, LabProcess]:
    return {
        name: LabProcess(**state[name])
        for name in ("redis", "documents", "manager", "catalog")
        if state.get(name)
    }


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _listeners(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp{,6}), e.g. ['127.0.0.1']."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.append(address)
    return found


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _run(data: Path, uid: str) -> tuple[dict, dict, int]:
    """(start document, stop document, events in primary) of a run, read by this process."""
    catalog = open_catalog(data, readonly=True)
    try:
        run = catalog.client[uid]
        start, stop = run.metadata["start"], run.metadata["stop"]
        events = len(run["primary"].read()["time"]) if stop["num_events"].get("primary") else 0
    finally:
        catalog.close()
    return start, stop, events


@pytest.fixture(scope="module")
def lab(cli_catalog_template, tmp_path_factory):
    if REDIS is None:
        pytest.skip(NO_REDIS)
    root = tmp_path_factory.mktemp("lab")
    data = fresh_data_dir(cli_catalog_template, root / "data")
    home = root / "home"
    home.mkdir()
    the_lab = Lab(root, data, child_env(data, HOME=str(home)))
    # The web panel has tests of its own (tests/web); here it would only poll the worker.
    rc, out, err = the_lab.cli("lab", "up", "--no-web")
    started = the_lab.state if (data / "lab.json").exists() else {}
    try:
        assert rc == 0, f"lab up failed ({rc}):\n{out}\n{err}"
        yield the_lab
    finally:
        if (data / "lab.json").exists():
            the_lab.cli("lab", "down")
        for proc in _processes(started).values():  # hygiene if lab down itself failed
            if proc.alive():
                os.kill(proc.pid, signal.SIGKILL)


@pytest.fixture
def in_lab_env(lab, monkeypatch):
    """This process looks for the lab where the CLI processes do."""
    monkeypatch.setenv(DATA_ENV, str(lab.data))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)
    return lab


@pytest.mark.slow
def test_lab_up_records_a_loopback_lab_and_status_says_up(lab):
    state = lab.state
    assert state["state"] == "up"
    assert state["profile"] is None  # the embedded simulated lab
    assert all(p.alive() for p in _processes(state).values()), state
    for key in ("control_addr", "info_addr", "documents_in", "documents_out"):
        assert state[key].startswith("tcp://127.0.0.1:"), state[key]
        assert _listeners(_port(state[key])) == ["127.0.0.1"], (key, state[key])
    assert _listeners(_port(state["redis_addr"])) == ["127.0.0.1"]
    for log in ("redis.log", "documents.log", "re_manager.log"):
        assert (lab.data / "logs" / log).stat().st_size > 0, log

    rc, out, err = lab.cli("lab", "status", timeout=RUN_TIMEOUT)
    assert rc == 0, err
    assert "up since" in out and "environment idle" in out, out
    assert state["control_addr"] in out


@pytest.mark.slow
def test_lab_up_twice_says_it_is_already_up(lab):
    before = lab.state
    rc, out, err = lab.cli("lab", "up", timeout=RUN_TIMEOUT)
    assert rc == 0, err
    assert "already up" in err, err
    assert lab.state == before  # nothing restarted


@pytest.mark.slow
def test_a_count_submitted_to_the_lab_streams_its_table_and_is_in_the_catalog(in_lab_env):
    out, err = io.StringIO(), io.StringIO()
    rc = submit_to_lab(
        "count", [["sim_meter"]], {"num": 3}, {"sample": "A1"}, stdout=out, stderr=err
    )
    assert rc == 0, err.getvalue()
    (uid,) = [line.split()[1] for line in out.getvalue().splitlines() if line.startswith("uid:")]
    rows = [line for line in out.getvalue().splitlines() if line.startswith("|") and ":" in line]
    assert len(rows) == 3, out.getvalue()  # the live table saw every event
    assert "sim_meter_power" in out.getvalue()
    # Readable as soon as submit_to_lab returns: the worker flushed before it reported done.
    start, stop, events = _run(in_lab_env.data, uid)
    assert stop["exit_status"] == "success"
    assert events == 3
    assert start["sample"] == "A1" and start["plan_name"] == "count"


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


@pytest.mark.slow
def test_ctrl_c_aborts_the_plan_and_the_lab_runs_the_next_one(in_lab_env):
    lab = in_lab_env
    code = (
        "import sys\nfrom daqbridge.cli._lab import submit_to_lab\n"
        "sys.exit(submit_to_lab('count', [['sim_meter']], {'num': 100000, 'delay': 0.05}))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=lab.env,
        cwd=lab.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    said: list[str] = []
    uid = None
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        # Until the run is on and has its first event in the live table: the abort must find
        # a run, and keep what it measured.
        while uid is None or not any(line.startswith("|") and ":" in line for line in said):
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "".join(said)
            said.append(line)
            if "started on the lab" in line:
                uid = line.split(" run ", 1)[1].split()[0]
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    ends = 0
    while ends < 2:  # both streams to their end
        line = lines.get(timeout=30)
        ends += line is None
        said.append(line or "")
    assert rc == 130, "".join(said)
    assert "the lab stays up" in "".join(said)

    start, stop, events = _run(lab.data, uid)
    assert stop["exit_status"] == "abort"
    assert 1 <= events < 100000

    state = find_lab()
    assert state is not None and state.manager.alive()
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(zmq_control_addr=state.control_addr)
    try:
        assert api.queue_get()["items"] == []  # the aborted plan was not put back in the queue
        history = api.history_get()["items"]
        assert history[-1]["result"]["exit_status"] == "aborted"
    finally:
        api.close()
    out = io.StringIO()
    assert (
        submit_to_lab("count", [["sim_meter"]], {"num": 1}, stdout=out, stderr=io.StringIO()) == 0
    )
    (next_uid,) = [
        line.split()[1] for line in out.getvalue().splitlines() if line.startswith("uid:")
    ]
    assert _run(lab.data, next_uid)[1]["exit_status"] == "success"


@pytest.mark.slow
def test_a_scan_past_a_soft_limit_is_refused_before_it_moves(in_lab_env):
    out, err = io.StringIO(), io.StringIO()
    rc = submit_to_lab("scan", [["sim_meter"], "sim_stage_x", -1, 100, 3], stdout=out, stderr=err)
    assert rc == 2, err.getvalue()  # an argument error, as in a cold `daqbridge run`
    said = err.getvalue()
    assert "sim_stage_x cannot go to 100" in said and "[-25.0, 25.0]" in said, said
    assert "started on the lab" not in said and "uid:" not in out.getvalue()  # no run opened
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(zmq_control_addr=find_lab().control_addr)
    try:
        assert api.queue_get()["items"] == []  # the refused plan was not put back in the queue
    finally:
        api.close()


def _history(lab: Lab) -> list[dict]:
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(zmq_control_addr=lab.state["control_addr"])
    try:
        return api.history_get()["items"]
    finally:
        api.close()


@pytest.mark.slow
def test_daqbridge_run_submits_to_the_lab_that_is_up_and_prints_the_table(lab):
    rc, out, err = lab.cli("run", "count", "sim_meter", "num=3", "--md", "sample=B2",
                           timeout=RUN_TIMEOUT)  # fmt: skip
    assert rc == 0, f"{out}\n{err}"
    said = err.splitlines()
    assert sum("the lab is up" in line for line in said) == 1, err  # said once, on one line
    (uid,) = [line.split()[1] for line in out.splitlines() if line.startswith("uid:")]
    rows = [line for line in out.splitlines() if line.startswith("|") and ":" in line]
    assert len(rows) == 3, out
    # The lab's worker ran it (a cold run would be in the catalog too, not in the lab's history).
    assert uid in _history(lab)[-1]["result"]["run_uids"]
    start, stop, events = _run(lab.data, uid)
    assert stop["exit_status"] == "success" and events == 3
    assert start["sample"] == "B2"
    assert start["daqbridge_command"].startswith("daqbridge run count sim_meter")


@pytest.mark.slow
def test_a_typo_in_a_device_id_is_refused_before_the_lab_as_without_one(lab):
    before = len(_history(lab))
    on_lab = lab.cli("run", "count", "sim_meterr", "num=1", timeout=RUN_TIMEOUT)
    cold = lab.cli("run", "--no-lab", "count", "sim_meterr", "num=1", timeout=RUN_TIMEOUT)
    assert on_lab[0] == cold[0] == 2, (on_lab, cold)
    assert "Did you mean 'sim_meter'" in on_lab[2], on_lab[2]
    assert "no attribute" not in on_lab[2]  # the queue server's message for an unknown id
    assert on_lab[2] == cold[2]  # the same message, word for word
    assert len(_history(lab)) == before  # it never reached the lab


@pytest.mark.slow
def test_a_plan_on_the_lab_records_a_baseline(lab):
    """The queue server's worker builds the runtime from daqbridge/cli/lab_startup: its runs have
    the baseline stream too, as cold runs and the IPython profile's do."""
    rc, out, err = lab.cli("run", "count", "sim_meter", timeout=RUN_TIMEOUT)
    assert rc == 0, f"{out}\n{err}"
    assert "the lab is up" in err  # submitted to the lab, not run cold
    (uid,) = [line.split()[1] for line in out.splitlines() if line.startswith("uid:")]
    catalog = open_catalog(lab.data, readonly=True)
    try:
        baseline = catalog.client[uid]["baseline"].read()
    finally:
        catalog.close()
    assert baseline.sizes["time"] == 2
    assert {"sim_meter_wavelength", "sim_laser_wavelength", "sim_stage_x"} <= set(baseline)


@pytest.mark.slow
def test_a_scan_on_the_lab_prints_peak_statistics_and_the_worker_saves_the_png(lab):
    """The worker has no window to show a plot in (even where DISPLAY is set: it is a service),
    so it saves each run's PNG in the data directory; `daqbridge run` prints a 1-D scan's peak
    statistics below the live table."""
    from .test_headless_plot import assert_a_drawn_png, printed_stat, the_run

    rc, out, err = lab.cli(
        "run", "scan", "sim_stage_x", "-2", "2", "5", "--detector", "sim_meter",
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert rc == 0, f"{out}\n{err}"
    assert "the lab is up" in err
    uid = re.search(r"^uid: (\S+)$", out, re.MULTILINE).group(1)
    assert out.index("peak statistics of sim_meter_power vs sim_stage_x:") > out.rindex("+----")
    _, table, start = the_run(lab.data, uid)
    x, y = table["sim_stage_x"].values, table["sim_meter_power"].values
    assert printed_stat(out, "max") == pytest.approx((y.max(), x[y.argmax()]), rel=1e-5)
    # The queue server reports the plan done after every subscriber had the stop document.
    assert_a_drawn_png(lab.data / "plots" / f"scan_{start['scan_id']}_{uid[:8]}.png")


_LIST_AND_SAY_WHAT_IT_IMPORTED = (
    "import json, sys\n"
    "from daqbridge.cli import main\n"
    "rc = main(['catalog', 'list'])\n"
    "print(json.dumps({'rc': rc, 'tiled_server': 'tiled.server.app' in sys.modules}))\n"
)


@pytest.mark.slow
def test_catalog_list_asks_the_lab_s_catalog_server_and_lists_what_the_files_hold(lab):
    """With a lab up, `catalog list` reads the lab's catalog over HTTP (no Tiled server of its
    own to import) and lists the same runs as reading the files does."""
    assert _listeners(_port(lab.state["catalog_addr"])) == ["127.0.0.1"]
    argv = [sys.executable, "-c", _LIST_AND_SAY_WHAT_IT_IMPORTED]
    rc, out, err = Cli(argv, lab.env, cwd=lab.root).result(RUN_TIMEOUT)
    assert rc == 0, err
    *table, said = out.strip().splitlines()
    assert json.loads(said) == {"rc": 0, "tiled_server": False}, err
    # rows under the header: scan, uid (8 characters), start, plan, status, events
    listed = [f[1] for f in map(str.split, table[1:]) if len(f) >= 6 and len(f[1]) == 8]
    catalog = open_catalog(lab.data, readonly=True)
    try:
        in_the_files = [run.uid[:8] for run in catalog.runs(20)]
    finally:
        catalog.close()
    assert listed == in_the_files and listed, out


@pytest.mark.slow
def test_lab_down_stops_everything_in_order(lab):
    state = lab.state
    processes = _processes(state)
    below_manager = [
        LabProcess(pid, process_start_time(pid), "")
        for pid in _descendants(state["manager"]["pid"])
    ]
    assert below_manager, "the RE Manager runs its manager and worker processes"
    ports = [
        _port(state[k])
        for k in ("control_addr", "info_addr", "documents_in", "documents_out", "redis_addr",
                  "catalog_addr")
    ]  # fmt: skip

    rc, out, err = lab.cli("lab", "down", timeout=RUN_TIMEOUT)
    assert rc == 0, err
    said = err.splitlines()
    order = [
        next(i for i, line in enumerate(said) if text in line)
        for text in ("runtime shut down in order", "worker environment closed", "RE Manager",
                     "catalog server", "document proxy", "redis-server")
    ]  # fmt: skip
    assert order == sorted(order), err
    assert not (lab.data / "lab.json").exists()
    assert not [p for p in [*processes.values(), *below_manager] if p.alive()]
    assert all(_refused(port) for port in ports), ports


def _write_lab_file(directory: Path, *, manager: dict, documents: dict, profile=None) -> None:
    """A lab.json as ``lab up`` writes it, pointing at processes the test controls."""
    address = "tcp://127.0.0.1:1"
    state = {
        "format": 1,
        "data_dir": str(directory),
        "profile": profile,
        "profile_label": profile or "embedded",
        "profile_sha256": None,
        "state": "up",
        "started": time.time(),
        "redis_addr": "127.0.0.1:1",
        "control_addr": address,
        "info_addr": address,
        "documents_in": address,
        "documents_out": address,
        "manager": manager,
        "documents": documents,
        "redis": None,
        "owner_pid": 1,
    }
    (directory / "lab.json").write_text(json.dumps(state))


@pytest.fixture
def sleepers():
    """Processes that stand in for a lab's, stopped at the end whatever happened."""
    started: list[subprocess.Popen] = []

    def start() -> dict:
        # Lives until killed (it waits on a pipe nobody writes to), with no timing of its own.
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        started.append(proc)
        return {"pid": proc.pid, "start_time": process_start_time(proc.pid), "log": ""}

    yield start, started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdin.close()


def test_a_stale_lab_file_is_cleaned_and_what_it_left_is_stopped(
    tmp_path, monkeypatch, capsys, sleepers
):
    start, started = sleepers
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    documents = start()
    _write_lab_file(
        tmp_path, manager={"pid": gone.pid, "start_time": 1, "log": ""}, documents=documents
    )
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)

    assert main(["lab", "status"]) == 3
    err = capsys.readouterr().err
    assert "cleaned a stale" in err and "manager no longer running" in err, err
    assert f"documents (pid {documents['pid']}) stopped" in err, err
    assert not (tmp_path / "lab.json").exists()
    assert started[0].wait(30) == -signal.SIGTERM


def test_a_lab_up_with_another_profile_is_not_used(tmp_path, monkeypatch, sleepers):
    start, _ = sleepers
    other = str(tmp_path / "other_lab.toml")
    _write_lab_file(tmp_path, manager=start(), documents=start(), profile=other)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)

    with pytest.raises(LabError, match="other_lab.toml") as refused:
        submit_to_lab("count", [["sim_meter"]], {"num": 1})
    assert "lab down" in str(refused.value)  # the fix
    assert (tmp_path / "lab.json").exists()  # that lab is up: left alone


def test_submit_without_a_lab_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)
    with pytest.raises(LabError, match="no lab is up") as refused:
        submit_to_lab("count", [["sim_meter"]], {"num": 1})
    assert "daqbridge lab up" in str(refused.value)


def test_lab_up_without_redis_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no redis-server anywhere on it
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)

    assert main(["lab", "up"]) == 1
    err = capsys.readouterr().err
    assert "redis-server is not installed" in err, err
    assert "apt-get install redis-server" in err and "--redis HOST:PORT" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "lab.json").exists()
