"""Signals, exit codes and cause chains: deterministic forms of issue 17, items 1, 2 and 7.

* Item 1: the kernel may hand SIGINT/SIGTERM to any thread, Python handles it on the main thread
  only, and the main thread used to wait for the plan with no timeout: a signal that landed on
  another thread was handled when the plan ended. Here the signal goes to a chosen NON-main
  thread: ``signal.pthread_kill`` in-process, ``tgkill`` into a real ``daqbridge run``.
* Item 2: an instrument's failure must reach the stop document's ``reason`` (and the caller) in
  the instrument's words, not as ``FailedStatus: DeviceStatus(...)``: a garbled reply injected
  by the simulator, the stop document read back from the catalog.
* Item 7: whatever the RunEngine raises after the user asked to stop (the camera's point failed
  by the abort's own stop, a clean-up step that fails), the user asked to stop: ShutdownRequested
  in the Python API, exit 130 and "aborted" from the CLI.

Every wait is bounded and waits for the condition it is about (an event emitted, a table row
printed); no assertion is about wall-clock time. The signal latency is measured and printed
in the session summary.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import pytest
from bluesky.utils import FailedStatus

from daqbridge.catalog import DATA_ENV, open_catalog
from daqbridge.errors import DaqbridgeError, ReplyError
from daqbridge.plans import exposure_series
from daqbridge.runtime import ShutdownRequested
from tests.stress import support

pytestmark = pytest.mark.ci_short

STAGE_AND_METER = """
[lab]
name = "signal lab {tag}"

[simulation]
enabled = true
speed = 1.0

[[instruments]]
id = "stage"
driver = "esp300"
stack = "native"
port = "sim://esp300?name=stage_{tag}"

[instruments.esp300]
axes = [{{ number = 1, name = "x", velocity = 1.0, low_limit = -50.0, high_limit = 50.0 }}]

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "native"
port = "sim://newport1830c?name=meter_{tag}"
"""

CAMERA = """
[lab]
name = "camera lab {tag}"

[simulation]
enabled = true
speed = 1.0

[[instruments]]
id = "camera"
driver = "pvcam"
stack = "native"
camera = "PrimeBSI"

[instruments.pvcam]
backend = "sim"
exposure_ms = 20.0
roi = {{ s1 = 0, s2 = 63, p1 = 0, p2 = 63 }}
binning = [1, 1]
"""

SCAN_POINTS = 31
"""Points of the interrupted scans: 1 mm apart at 1 mm/s, about 30 s if nothing stops them."""

CLI_TIMEOUT = 240.0
"""Seconds a ``daqbridge run`` child may take in all (start-up alone is seconds on a loaded box)."""

ROW = re.compile(r"^\|\s+\d+ \|")
UID = re.compile(r"^uid: ([0-9a-f-]{36})$", re.MULTILINE)


def _profile(tmp_path: Path, template: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(template.format(tag=uuid.uuid4().hex[:8]))
    return path


@pytest.fixture
def lab(tmp_path: Path, stress_data) -> Any:
    """``lab(template)``: a runtime with ``sigint="abort"`` (its handlers installed: this is
    the main thread), closed at the end of the test."""
    started: list[Any] = []

    def start(template: str) -> Any:
        rt = support.start_runtime(
            _profile(tmp_path, template), stress_data("signals"), sigint="abort"
        )
        started.append(rt)
        assert rt.install_signal_handlers().installed
        return rt

    yield start
    for rt in started:
        report = rt.close(reason="end of test")
        assert report.clean, report.format()


class EventCount:
    """RunEngine subscriber: counts events; ``reached(n)`` is set once ``n`` were emitted."""

    def __init__(self, n: int) -> None:
        self.times: list[float] = []
        self.reached = threading.Event()
        self._n = n

    def __call__(self, name: str, doc: dict) -> None:
        if name == "event":
            self.times.append(time.monotonic())
            if len(self.times) >= self._n:
                self.reached.set()


def _signal_from_another_thread(signum: int, when: threading.Event) -> dict[str, Any]:
    """Deliver ``signum`` to a helper thread (never the main one) once ``when`` is set."""
    sent: dict[str, Any] = {}

    def deliver() -> None:
        if not when.wait(120):
            return
        sent["thread"] = threading.get_ident()
        sent["at"] = time.monotonic()
        signal.pthread_kill(threading.get_ident(), signum)

    threading.Thread(target=deliver, name="signal-sender", daemon=True).start()
    return sent


def _run(rt: Any, plan: Any) -> BaseException | None:
    """``rt.run(plan)``; what came out of it (a SystemExit or KeyboardInterrupt included, so a
    wrong outcome fails the test instead of ending the session)."""
    try:
        rt.run(plan)
    except BaseException as exc:  # noqa: BLE001 - the assertions name what came out
        return exc
    return None


# --- item 1: a signal to a non-main thread, in the Python API --------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_on_another_thread_aborts_the_run_at_once(lab, signum):
    rt = lab(STAGE_AND_METER)
    events = EventCount(3)
    rt.RE.subscribe(events)
    sent = _signal_from_another_thread(signum, events.reached)

    outcome = _run(rt, bp.scan([rt["meter"]], rt["stage_x"], 0, SCAN_POINTS - 1, SCAN_POINTS))
    ended = time.monotonic()

    assert sent.get("thread") not in (None, threading.main_thread().ident)
    # SIGTERM used to escape as SystemExit(143), SIGINT as KeyboardInterrupt, after the plan.
    assert isinstance(outcome, ShutdownRequested), repr(outcome)
    # Bounded: at most the point under way when the signal came was completed after it (a
    # point takes a second of stage motion). It was every point left in the plan.
    after = [t for t in events.times if t > sent["at"]]
    assert len(after) <= 1, f"{len(after)} events after the signal"
    assert len(events.times) < SCAN_POINTS
    assert outcome.signum == signum
    (uid,) = outcome.uids
    assert outcome.exit_statuses == {uid: "abort"} and outcome.aborted
    support.report(
        f"signals: {signal.Signals(signum).name} to a non-main thread",
        [f"run() ended {ended - sent['at']:.3f} s after the signal; events after it: {len(after)}"],
    )
    rt.catalog.flush()
    run = rt.catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "abort"
    assert len(run.primary.read()["meter_power"]) == len(events.times)
    assert rt.simulation.simulator("stage").axis_position(1) < SCAN_POINTS - 2


# --- item 2: the instrument's words in the stop document --------------------------------------


def test_a_garbled_reply_is_the_stop_reason_in_the_instruments_words(lab):
    rt = lab(STAGE_AND_METER)
    meter_sim = rt.simulation.simulator("meter")

    def garble_after_the_first_point(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 1:
            meter_sim.faults.garble_next = 1  # the reply to the next 'D?'

    rt.RE.subscribe(garble_after_the_first_point)
    uids: list[str] = []
    rt.RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
    outcome = _run(rt, bp.count([rt["meter"]], 10))
    rt.catalog.flush()

    (uid,) = uids
    stop = rt.catalog[uid].metadata["stop"]
    assert stop["exit_status"] == "fail"
    # Was "DeviceStatus(device=meter, done=True, success=False)".
    assert stop["reason"].startswith("[instrument 'meter' on sim://newport1830c?name=meter_"), stop
    assert "reply to 'D?'" in stop["reason"] and "Fix:" in stop["reason"], stop
    # What the caller gets reads the same: the instrument's own error. The meter is an
    # ophyd-async device, whose read raises it; a v1 device's failed status arrives as a
    # FailedStatus caused by it (test_a_failed_status_reads_as_its_cause covers that path).
    assert str(outcome) == stop["reason"]
    assert isinstance(outcome, ReplyError)


def test_a_failed_status_reads_as_its_cause(lab):
    """The v1 path of the same rule: a move's status fails on a garbled reply, and bluesky's
    FailedStatus reads as the instrument's error (the v1 ESP300 axis moves through a status)."""
    rt = lab(STAGE_AND_METER)
    stage_sim = rt.simulation.simulator("stage")

    def garble_after_the_first_point(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 1:
            stage_sim.faults.garble_next = 1  # the reply to the next move's first query

    rt.RE.subscribe(garble_after_the_first_point)
    uids: list[str] = []
    rt.RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
    outcome = _run(rt, bp.scan([rt["meter"]], rt["stage_x"], 0, 1, 5))
    rt.catalog.flush()

    (uid,) = uids
    stop = rt.catalog[uid].metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert stop["reason"].startswith("[instrument 'stage"), stop
    assert str(outcome) == stop["reason"]
    assert isinstance(outcome, FailedStatus) and isinstance(outcome.__cause__, ReplyError)


# --- item 7: whatever the RunEngine raises after a signal, the user asked to stop ------------


def test_a_clean_up_that_fails_after_the_signal_still_ends_as_an_abort(lab):
    rt = lab(CAMERA)
    camera = rt["camera"]
    events = EventCount(1)
    rt.RE.subscribe(events)
    _signal_from_another_thread(signal.SIGINT, events.reached)

    def one_more_frame() -> Any:
        # After the abort the camera is unstaged: its trigger fails (InstrumentError), as the
        # camera's point failed by the abort's own stop() sometimes reached the RunEngine after
        # the plan had handled the abort (issue 17, item 7: 1 in 5 interrupted series).
        yield from bps.trigger(camera, wait=True)

    plan = bpp.finalize_wrapper(exposure_series(camera, [300.0] * 20), one_more_frame())
    outcome = _run(rt, plan)

    assert isinstance(outcome, ShutdownRequested), repr(outcome)
    assert outcome.aborted
    assert isinstance(outcome.error, DaqbridgeError) and outcome.error.instrument == "camera"
    (uid,) = outcome.uids
    rt.catalog.flush()
    assert rt.catalog[uid].metadata["stop"]["exit_status"] == "abort"


# --- items 1 and 7 through the command line ------------------------------------------------


def _tgkill(pid: int, tid: int, signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum})")


def _another_thread(pid: int, signum: int) -> int:
    """A thread of ``pid`` other than its main one that does not block ``signum``."""
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
        tid = int(task.name)
        if tid == pid:
            continue
        status = (task / "status").read_text()
        blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
        if not blocked & (1 << (signum - 1)):
            return tid
    raise AssertionError(f"no thread of {pid} but the main one takes signal {signum}")


def _daqbridge_run(
    args: list[str], profile: Path, data: Path, signum: int, *, after_rows: int
) -> tuple[int, str, str]:
    """Run ``daqbridge run ARGS``, send ``signum`` to one of its non-main threads once
    ``after_rows`` rows of the live table are out, and return (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ENV, "DAQBRIDGE_PROFILE")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
        **{DATA_ENV: str(data)},
    )
    env.pop("DISPLAY", None)
    argv = [sys.executable, "-m", "daqbridge", "run", *args, "--profile", str(profile)]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out: list[str] = []
    err: list[str] = []
    rows = threading.Event()

    def read_stdout() -> None:
        for line in proc.stdout:
            out.append(line)
            if sum(1 for row in out if ROW.match(row)) >= after_rows:
                rows.set()

    readers = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        assert rows.wait(CLI_TIMEOUT), "".join(out) + "".join(err)
        _tgkill(proc.pid, _another_thread(proc.pid, signum), signum)
        code = proc.wait(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=30)
    return code, "".join(out), "".join(err)


def _the_run(data: Path, uid: str) -> tuple[Any, int]:
    catalog = open_catalog(data, readonly=True)
    try:
        summary = next(r for r in catalog.runs(10) if r.uid == uid)
        return summary, summary.points  # the scan's own events: no baseline readings
    finally:
        catalog.close()


def test_daqbridge_run_stops_on_sigterm_to_any_thread(tmp_path, stress_data):
    # SIGINT takes the same path (the next test, and tests/cli/test_run.py's Ctrl-C).
    profile = _profile(tmp_path, STAGE_AND_METER)
    data = stress_data("signals-cli")
    args = ["scan", "stage_x", "0", str(SCAN_POINTS - 1), str(SCAN_POINTS), "--detector", "meter"]
    status, out, err = _daqbridge_run(args, profile, data, signal.SIGTERM, after_rows=2)

    assert status == 128 + signal.SIGTERM, out + err
    assert "SIGTERM received: the run was aborted; its data is kept, marked 'abort'." in err
    assert "Traceback" not in err
    (uid,) = UID.findall(out)
    summary, events = _the_run(data, uid)
    assert summary.exit_status == "abort"
    assert 2 <= events < SCAN_POINTS
    assert events == sum(1 for line in out.splitlines() if ROW.match(line))


def test_an_exposure_series_interrupted_by_a_signal_exits_130_aborted(tmp_path, stress_data):
    profile = _profile(tmp_path, CAMERA)
    data = stress_data("signals-camera")
    args = ["exposure_series", "camera", ",".join(["300"] * 20)]
    status, out, err = _daqbridge_run(args, profile, data, signal.SIGINT, after_rows=1)

    assert status == 130, out + err
    assert "SIGINT received: the run was aborted; its data is kept, marked 'abort'." in err
    assert "the plan failed" not in err and "Traceback" not in err
    (uid,) = UID.findall(out)
    summary, events = _the_run(data, uid)
    assert summary.exit_status == "abort"
    assert 1 <= events < 20
