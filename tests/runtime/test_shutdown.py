"""Ordered shutdown: deadlines per phase, hung drivers forced and reported, signals, atexit.

The slow parts (a child process per signal scenario) build the runtime on a small simulated
profile; everything is real (ptys, sim:// ports, the RunEngine, the Tiled catalog).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import bluesky.plans as bp
import pytest

from daqbridge.catalog import open_catalog
from daqbridge.config import load_profile
from daqbridge.errors import ShutdownError
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    LegacyInstrument,
    Measurement,
    register_driver,
    unregister_driver,
)
from daqbridge.runtime import PHASES, PhaseForced, Runtime, ShutdownReport, SignalHandlers
from daqbridge.runtime._shutdown import Skipped, run_phase

# --- the phase runner ---------------------------------------------------------------------------


def test_phase_outcomes_ok_skipped_failed():
    assert run_phase("native", lambda: "3 stopped", 1.0).outcome == "ok"
    assert run_phase("native", lambda: "3 stopped", 1.0).detail == "3 stopped"
    skipped = run_phase("legacy", lambda: Skipped("legacy stack off"), 1.0)
    assert (skipped.outcome, skipped.detail) == ("skipped", "legacy stack off")

    def broken():
        raise ShutdownError("meter close: port vanished")

    failed = run_phase("native", broken, 1.0)
    assert failed.outcome == "failed"
    assert "port vanished" in failed.detail
    assert isinstance(failed.error, ShutdownError)

    def gave_up():
        raise PhaseForced("legacy drivers did not finish: meter: hung in poll")

    assert run_phase("legacy", gave_up, 1.0).outcome == "forced"


def test_a_hung_phase_is_abandoned_at_its_deadline():
    release = threading.Event()
    t0 = time.monotonic()
    try:
        outcome = run_phase("catalog", lambda: release.wait(30), 0.2)
    finally:
        release.set()
    elapsed = time.monotonic() - t0
    assert outcome.outcome == "forced"
    assert "deadline of 0.2 s" in outcome.detail
    assert 0.2 <= elapsed < 5.0  # generous: the machine is shared


def test_report_format_and_problems():
    report = ShutdownReport("test", time.time())
    report.phases.append(run_phase("run_engine", lambda: Skipped("no plan running"), 1.0))
    assert report.clean
    report.raise_for_problems()  # nothing to raise
    report.phases.append(run_phase("native", lambda: 1 / 0, 1.0))
    assert not report.clean and report.failed == ["native"]
    assert "ZeroDivisionError" in report.format()
    assert report.as_dict()["phases"][1]["outcome"] == "failed"
    with pytest.raises(ShutdownError, match="native failed"):
        report.raise_for_problems()
    with pytest.raises(KeyError, match="run_engine"):
        report.phase("coffee")


# --- a hung legacy driver -----------------------------------------------------------------------


class HungMeter(LegacyInstrument):
    """A legacy power meter whose driver hangs in ``poll`` or ``disconnect`` (as drivers do when
    a USB adapter vanishes mid-read)."""

    release = threading.Event()

    def __init__(self, instrument_id: str, hang_in: str) -> None:
        super().__init__(instrument_id)
        self.hang_in = hang_in
        self.polls = 0

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        if self.hang_in == "disconnect":
            self.release.wait(60)

    def poll(self) -> list[Measurement]:
        self.polls += 1
        if self.hang_in == "poll" and self.polls > 2:
            self.release.wait(60)
        return [self.measurement("power", 1e-3)]

    def handle(self, command: Command) -> CommandResult:
        return CommandResult.failure(f"{command} is not supported", instrument=self.instrument_id)

    def parameters(self) -> dict:
        return {}

    def channels(self) -> dict:
        return {"power": ChannelInfo("power", "W")}


@pytest.fixture
def hung_driver():
    HungMeter.release.clear()
    for where in ("poll", "disconnect"):
        register_driver(
            f"test_hung_in_{where}",
            lambda entry, ports, where=where: HungMeter(entry.name, where),
            needs_port=False,
            replace=True,
        )
    yield
    HungMeter.release.set()  # let the abandoned threads finish
    for where in ("poll", "disconnect"):
        unregister_driver(f"test_hung_in_{where}")


@pytest.mark.parametrize("hang_in", ["poll", "disconnect"])
def test_hung_legacy_driver_is_forced_within_its_deadline_and_reported(
    runtime_data, runtime_profile, hung_driver, hang_in, caplog
):
    path = runtime_profile(meter="legacy", shutdown="[shutdown]\nlegacy = 1.0")
    rt = Runtime.from_profile(path, legacy_types={"meter": f"test_hung_in_{hang_in}"})
    try:
        meter = rt.legacy.instruments["meter"]
        deadline = time.monotonic() + 10
        while meter.polls < 3:  # so the third poll hangs (hang_in="poll")
            assert time.monotonic() < deadline, rt.legacy.health()["meter"]
            time.sleep(0.02)
        t0 = time.monotonic()
        with caplog.at_level("INFO", logger="daqbridge.runtime"):
            report = rt.close()
        elapsed = time.monotonic() - t0
    finally:
        rt.close()
    legacy = report.phase("legacy")
    assert legacy.outcome == "forced", report.format()
    assert "meter" in legacy.detail and hang_in in legacy.detail, legacy.detail
    assert legacy.duration < 1.0 + 1.5
    # Later phases still ran: ports closed, simulators stopped, catalog closed.
    for phase in ("native", "catalog", "resources", "simulators"):
        assert report.phase(phase).outcome == "ok", report.format()
    assert rt.resources.pool.ports == {}
    assert elapsed < sum(d for _, d in rt.profile.shutdown.phases())
    assert report.forced == ["legacy"] and not report.clean
    assert any("NOT clean" in r.getMessage() for r in caplog.records)


# --- close ----------------------------------------------------------------------------------------


def test_close_twice_is_safe_and_a_closed_runtime_refuses_plans(runtime_data, runtime_profile):
    path = runtime_profile(meter="native", stage="native")
    rt = Runtime.from_profile(path)
    stage = rt["stage_x"]
    first = rt.close()
    assert [p.phase for p in first.phases] == list(PHASES)
    assert first.clean, first.format()
    assert first.phase("run_engine").outcome == "skipped"
    assert rt.close() is first
    assert rt.state == "closed"
    with pytest.raises(ShutdownError, match="closed"):
        rt.run(bp.count([stage]))
    with rt:  # a context manager around a closed runtime does nothing more
        pass
    assert rt.shutdown_report is first


def test_close_from_two_threads_runs_the_shutdown_once(runtime_data, runtime_profile):
    rt = Runtime.from_profile(runtime_profile(meter="native", stage=None))
    reports: list[ShutdownReport] = []
    threads = [threading.Thread(target=lambda: reports.append(rt.close())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(reports) == 3 and all(r is reports[0] for r in reports)


def test_signal_handlers_at_idle_raise_in_the_main_thread(runtime_profile):
    rt = Runtime(load_profile(runtime_profile(meter="native", stage=None)), sigint="abort")
    handlers = rt.install_signal_handlers()
    try:
        assert signal.getsignal(signal.SIGTERM) == handlers._handle
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before
        assert info.value.code == 128 + signal.SIGTERM
        rt._shutdown_signal = None  # as if the SystemExit had been handled
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert rt.shutdown_requested == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # a shutdown is on its way: not interrupted again
        time.sleep(0.05)
        rt.closing = True  # during the shutdown itself, signals are ignored
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    finally:
        rt.closing = False
        rt.uninstall_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) != handlers._handle


def test_signal_handlers_need_the_main_thread(runtime_profile):
    rt = Runtime(load_profile(runtime_profile(meter="native", stage=None)))
    errors: list[BaseException] = []

    def install():
        try:
            SignalHandlers(rt, [signal.SIGTERM]).install()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    t = threading.Thread(target=install)
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ShutdownError)
    assert "main thread" in str(errors[0])


# --- signals and exit in a real process --------------------------------------------------------

CHILD_SCAN = textwrap.dedent(
    """
    import atexit, json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import bluesky.plans as bp
    from daqbridge.runtime import Runtime

    rt = Runtime.from_profile(sys.argv[1], sigint="abort")
    rt.sd.baseline = []  # every EVENT below is a point of the scan
    stage = rt.simulation.simulator("stage")

    @atexit.register  # runs after the runtime's own exit hook has shut the lab down
    def after_exit():
        report = rt.shutdown_report
        print("REPORT", json.dumps(report.as_dict() if report else None), flush=True)
        print("STAGE", json.dumps({"stops": stage.stop_count, "moving": stage.is_moving(1),
                                   "position": stage.axis_position(1)}), flush=True)

    rt.RE.subscribe(lambda name, doc: print("EVENT", flush=True) if name == "event" else None)
    try:
        rt.run(bp.scan([rt["meter"]], rt["stage_x"], 0, 20, 201))
        print("FINISHED", flush=True)
    except KeyboardInterrupt as exc:
        print("INTERRUPTED", type(exc).__name__, flush=True)
    # No close(): leaving the interpreter must shut the lab down in order.
    """
)


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_sigint_during_a_scan_aborts_keeps_data_and_exit_shuts_down(
    runtime_data, runtime_profile, runtime_child_env
):
    # 0.5 mm/s at real speed: 20 mm take 40 s, so the scan is surely running at the signal.
    path = runtime_profile(meter="shadow", speed=1.0, velocity=0.5)
    env = dict(runtime_child_env, DAQBRIDGE_DATA=str(runtime_data))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCAN, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(child.stdout, lines), daemon=True).start()
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(child.stderr), daemon=True).start()
    out: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while out.count("EVENT") < 3:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "child ended early:\n" + "".join(errors[-40:])
            out.append(line)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 0, "".join(errors[-60:])
    finally:
        if child.poll() is None:
            child.kill()
    while (line := lines.get(timeout=10)) is not None:
        out.append(line)
    assert "INTERRUPTED ShutdownRequested" in out, out
    assert "FINISHED" not in out
    report = json.loads(next(x for x in out if x.startswith("REPORT"))[len("REPORT ") :])
    assert report["reason"] == "interpreter exit"
    assert report["clean"], report
    assert report["phases"][0]["phase"] == "run_engine"
    stage = json.loads(next(x for x in out if x.startswith("STAGE"))[len("STAGE ") :])
    assert stage["stops"] >= 1 and stage["moving"] is False
    assert stage["position"] < 19.0  # it really stopped part-way
    events = out.count("EVENT")

    catalog = open_catalog(runtime_data, readonly=True)
    try:
        summary = catalog.runs(1)[0]
        assert summary.exit_status == "abort"
        assert summary.plan_name == "scan"
        data = catalog[summary.uid].primary.read()
        assert events <= len(data["stage_x"]) <= 201
        assert len(data["stage_x"]) >= 3
    finally:
        catalog.close()
