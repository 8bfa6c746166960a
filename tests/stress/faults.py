"""The fault campaign: every instrument of the simulated lab against every fault its simulator has.

For each (instrument, fault) cell a small plan runs; after ``inject_after`` events the fault is
injected from a RunEngine subscriber (so it strikes mid-run, between two points). The run ends;
the fault is cleared; the same plan runs again on the same runtime. Invariants of a cell:

* bounded: the faulted run ends by itself (a per-cell watchdog aborts it and dumps every thread's
  stack otherwise, which counts as a hang);
* clear failure: if ``RE(...)`` raised, a DaqbridgeError is in the exception chain and its text
  names the instrument (or its port); never a bare exception from deep inside;
* no data lost: the events the RunEngine emitted before the run ended are all in the catalog;
* recovery: the NEXT run, with the fault cleared and no restart, completes with all its events
  (legacy drivers get a bounded wait to finish their own automatic reconnect first).

Outcomes: ``completed`` (the driver rode the fault out), ``failed: <message>``, ``aborted``.
Used by tests/stress/test_faults.py (ci_short and stress forms) and benchmarks/fault_campaign.py.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import bluesky.plans as bp

from daqbridge import plans as dp
from daqbridge.sim import SerialSimulator
from tests.stress import support

TIMEOUTS: dict[str, float] = {}
"""Reply timeouts the campaign's lab profile overrides: none. Healthy exchanges run on the lab's
own timeouts (1-3 s): on the shared 2-core machine a healthy round trip through a simulator
takes 0.6 ms typically but up to 0.39 s at load 11 (30,000 measured), so a shorter bound made a
healthy run fail now and then. Only while a fault is active are the faulted instrument's
drivers given ``FAULT_TIMEOUTS``, so a fault still costs a fraction of a second."""

FAULT_TIMEOUTS = {
    "sim_stage": 0.4,
    "sim_meter": 0.4,
    "sim_laser": 0.5,
    "sim_rotators": 0.4,
    "sim_dmm": 0.5,
}
"""Reply timeouts (s) of the drivers of an instrument whose simulator has a fault injected, from
the injection until the fault is cleared (see ``FaultTimeouts``)."""

DELAY = 0.9
"""Reply delay of the 'reply delay' fault: beyond every fault timeout above. After the fault is
cleared the cell waits (bounded, see ``wait_for_owed_replies``) until the device has sent every
reply it still owed, so they are stale bytes on the line when the next run starts instead of
answers that arrive in the middle of its first exchange."""

OWED_REPLIES_LIMIT = 20.0
"""Seconds a device may take to send the replies a 'reply delay' fault held back."""

CELL_LIMIT = 40.0
"""Seconds a faulted run may take before the cell's watchdog aborts it (a hang)."""

PlanMaker = Callable[[Any, int, random.Random], Generator[Any, Any, Any]]


def tune_for_campaign(rt: Any) -> None:
    """Shorten the waits no profile key reaches (lab defaults: 30 s), so a stuck mount or laser
    costs seconds. Only bounds change; no behaviour does."""
    for iid in ("sim_rotators_a", "sim_rotators_b", "sim_rotators_c"):
        rt.devices[iid].move_timeout = 4.0
    laser = rt.legacy.instruments.get("sim_laser") if rt.legacy is not None else None
    if laser is not None:
        laser.settle_timeout_s = 4.0
        laser.readback_timeout_s = 1.0


class FaultTimeouts:
    """Short reply timeouts for the drivers of one simulated instrument while its fault lasts.

    Native drivers read their reply timeout from an attribute at every exchange. A legacy
    driver reads it from its serial line, which it builds again from ``timeout_s`` when it
    reconnects (as it may during the fault): both are set, and the line in use is given the
    restored value at the end.
    """

    NATIVE: dict[str, tuple[str, str]] = {
        "sim_stage": ("sim_stage", "reply_timeout"),  # the ophyd-async controller (WireDevice)
        "sim_meter": ("sim_meter", "reply_timeout"),  # the ophyd-async meter (core WireDevice)
        "sim_rotators": ("sim_rotators_", "reply_timeout"),  # every mount on the bus
        "sim_dmm": ("sim_dmm", "reply_timeout"),  # the ophyd-async SCPI instrument
    }
    LEGACY: dict[str, str] = {"sim_meter": "sim_meter_legacy", "sim_laser": "sim_laser"}

    def __init__(self, rt: Any, simulator: str) -> None:
        self.seconds = FAULT_TIMEOUTS.get(simulator)
        native = self.NATIVE.get(simulator)
        self.native: list[tuple[Any, str]] = []
        if native is not None:
            prefix, attr = native
            self.native = [
                (device, attr)
                for iid, device in rt.devices.items()
                if iid == prefix or (prefix.endswith("_") and iid.startswith(prefix))
            ]
        legacy = rt.legacy.instruments if rt.legacy is not None else {}
        self.legacy = [legacy[iid] for iid in (self.LEGACY.get(simulator),) if iid in legacy]
        self._saved: list[tuple[Any, str, Any]] = []

    def shorten(self) -> None:
        if self.seconds is None:
            return
        for obj, attr in [*self.native, *((inst, "timeout_s") for inst in self.legacy)]:
            self._saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, self.seconds)
        for inst in self.legacy:
            self._set_line(inst, self.seconds)

    def restore(self) -> None:
        for obj, attr, value in self._saved:
            setattr(obj, attr, value)
        if self._saved:
            for inst in self.legacy:
                self._set_line(inst, inst.timeout_s)
        self._saved.clear()

    @staticmethod
    def _set_line(inst: Any, seconds: float) -> None:
        line = getattr(inst, "_line", None)
        if line is not None:
            line.timeout = seconds


# --- faults ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Any, str], None]
    clear: Callable[[Any, str], None]
    note: str = ""


def _sim(rt: Any, iid: str) -> Any:
    return rt.simulation.simulators[iid]


def _setter(attr: str, value: Any, normal: Any) -> tuple[Callable, Callable]:
    def inject(rt: Any, iid: str) -> None:
        setattr(_sim(rt, iid).faults, attr, value)

    def clear(rt: Any, iid: str) -> None:
        setattr(_sim(rt, iid).faults, attr, normal)

    return inject, clear


def _unplug(rt: Any, iid: str) -> None:
    server = rt.simulation.servers.get(iid)
    if iid == "sim_dmm":
        server.disconnect_all()  # the instrument reboots: every socket drops
    elif server is not None:
        server.unplug()  # a real pty: the master closes, the path disappears
    else:
        _sim(rt, iid).unplug()  # sim:// URL: the handle dies as on a vanished USB adapter


def _replug(rt: Any, iid: str) -> None:
    server = rt.simulation.servers.get(iid)
    if iid == "sim_dmm":
        return  # the server accepts new connections: nothing to plug back
    if server is not None:
        server.replug()
    else:
        _sim(rt, iid).replug()


STALE = {
    "sim_stage": b"12.34500\r\n1\r\n",
    "sim_meter": b"+.1234E-3\n0800\n",
    "sim_laser": b"3.000W\n820nm\n",
    "sim_rotators": b"2PO00001000\r\n2GS00\r\n",
}


def _stale(rt: Any, iid: str) -> None:
    _sim(rt, iid).inject_stale(STALE[iid])


def _nothing(rt: Any, iid: str) -> None:
    pass


def _queue_error(code: int) -> Callable[[Any, str], None]:
    def inject(rt: Any, iid: str) -> None:
        _sim(rt, iid).queue_error(code)

    return inject


def _clear_scpi_errors(rt: Any, iid: str) -> None:
    model = _sim(rt, iid)
    with model.lock:
        model.errors.clear()


def _clear_esp300_errors(rt: Any, iid: str) -> None:
    sim = _sim(rt, iid)
    with sim.lock:
        sim.error_queue.clear()


_SAVED_INPUT: dict[str, Any] = {}


def _over_range(rt: Any, iid: str) -> None:
    sim = _sim(rt, iid)
    _SAVED_INPUT[iid] = sim.optical_input
    sim.optical_input = lambda: 100.0  # beyond the highest range even with the attenuator


def _restore_input(rt: Any, iid: str) -> None:
    if iid in _SAVED_INPUT:
        _sim(rt, iid).optical_input = _SAVED_INPUT.pop(iid)


def _local_mode(on: bool) -> Callable[[Any, str], None]:
    def act(rt: Any, iid: str) -> None:
        _sim(rt, iid).set_local_mode(on)

    return act


def _elliptec_status(rt: Any, iid: str) -> None:
    _sim(rt, iid).inject_status(2, 0x0B)  # motor error, latched for the next gs


def _elliptec_stall(rt: Any, iid: str) -> None:
    _sim(rt, iid).stall(2)


def _readout_failure(rt: Any, iid: str) -> None:
    _sim(rt, iid).fail_next_readout(1)


def _common() -> dict[str, Fault]:
    delay = _setter("reply_delay", DELAY, 0.0)
    drop = _setter("drop_next", 2, 0)
    garble = _setter("garble_next", 1, 0)
    stuck = _setter("stuck", True, False)
    echo = _setter("echo", True, False)
    return {
        "reply delay": Fault("reply delay", *delay, note=f"every reply {DELAY} s late"),
        "drop": Fault("drop", *drop, note="the next 2 replies lost"),
        "garble": Fault("garble", *garble, note="one byte of the next reply corrupted"),
        "stale bytes": Fault("stale bytes", _stale, _nothing, note="plausible old replies"),
        "unplug/replug": Fault("unplug/replug", _unplug, _replug, note="cable pulled mid-run"),
        "stuck": Fault("stuck", *stuck, note="device swallows every command"),
        "echo": Fault("echo", *echo, note="every command echoed"),
    }


COMMON = _common()
SPECIFIC = {
    "error queue (ESP300 108)": Fault(
        "error queue", _queue_error(108), _clear_esp300_errors, note="x08 motor not connected"
    ),
    "error queue (SCPI -222)": Fault(
        "error queue", _queue_error(-222), _clear_scpi_errors, note="data out of range"
    ),
    "over range": Fault("over range", _over_range, _restore_input, note="100 W on the head"),
    "local mode": Fault(
        "local mode", _local_mode(True), _local_mode(False), note="shutter commands ignored"
    ),
    "status 0B": Fault("status", _elliptec_status, _nothing, note="GS0B motor error latched"),
    "stall": Fault("stall", _elliptec_stall, _nothing, note="next move stops halfway, GS02"),
    "readout failure": Fault("readout failure", _readout_failure, _nothing, note="next frame"),
}


# --- instruments -----------------------------------------------------------------------------


Check = Callable[[Any, "support.RunRecord"], list[str]]


@dataclass(frozen=True)
class Target:
    device: str  # the device the plan exercises (table row)
    simulator: str  # the instrument id whose simulator gets the fault
    plan: PlanMaker
    faults: tuple[str, ...]
    check: Check | None = None
    """Are the recorded values the instrument's? A run that 'completes' with another query's
    reply in a field (a stream shifted by one line) is silent corruption, not a success."""

    def names(self, rt: Any) -> tuple[str, ...]:
        """What a clear message names: the instrument, or the port / resource it is on."""
        sim = rt.simulation
        where = sim.ports.get(self.simulator) or sim.resources.get(self.simulator)
        if self.simulator == "sim_camera":
            where = "PrimeBSI"
        return (self.simulator, where) if where else (self.simulator,)


SERIAL_FAULTS = ("reply delay", "drop", "garble", "stale bytes", "stuck", "echo")
SCPI_FAULTS = ("reply delay", "drop", "garble", "stuck", "echo")
LAST = ("unplug/replug",)
"""Faults run last for each instrument: when recovery fails they poison the later cells."""


def _stage_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    D = rt.devices
    start = rng.uniform(-2, 0)
    return bp.scan([D["sim_stage_y"]], D["sim_stage_x"], start, start + 0.5 * (n - 1), n)


def _meter_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    return bp.count([rt.devices["sim_meter"]], n)


def _legacy_meter_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    return bp.count([rt.devices["sim_meter_legacy"]], n)


def _laser_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    D = rt.devices
    start = rng.uniform(780, 800)
    return dp.wavelength_scan(D["sim_laser"], D["sim_meter"], start, start + 4 * (n - 1), n)


def _rotator_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    D = rt.devices
    start = rng.uniform(-40, 0)
    angles = [start + 10 * i for i in range(n)]
    return dp.polarization_scan(D["sim_rotators_a"], D["sim_meter"], angles)


def _dmm_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    return bp.count([rt.devices["sim_dmm"]], n)


DMM_SOURCE_V = 1.25
"""The DMM's source setting during the campaign (output off, so the voltmeter reads ~0 V): a
voltage field holding the source's reply, or the reverse, then shows up as a wrong value."""


def _dmm_values(rt: Any, record: support.RunRecord) -> list[str]:
    model = rt.simulation.simulators["sim_dmm"]
    volts = model.source_voltage if model.output_enabled else 0.0
    problems = []
    for i, data in enumerate(record.data):
        got_v, got_s = data.get("sim_dmm_voltage"), data.get("sim_dmm_source")
        if got_v is None or abs(got_v - volts) > 1e-3:
            problems.append(f"event {i + 1}: sim_dmm_voltage {got_v!r}, instrument has {volts}")
        if got_s is not None and abs(got_s - model.source_voltage) > 1e-9:
            problems.append(
                f"event {i + 1}: sim_dmm_source {got_s!r}, instrument has {model.source_voltage}"
            )
    return problems


def _resync_dmm(rt: Any, limit: float = OWED_REPLIES_LIMIT) -> str | None:
    """Bring the DMM's connection in step (test-side), so every cell starts clean; the cell that
    left replies in it has already been judged. Replies come back in order: ask ``*IDN?`` and
    discard every line until its answer (the one line with four comma-separated fields), however
    late the lines before it come (bounded by ``limit``). Returns None, or why the connection
    could not be brought in step."""
    session = rt.devices["sim_dmm"].port.session  # the VISA session under the device
    deadline = time.monotonic() + limit
    try:
        session.write("*IDN?")
    except Exception as exc:  # noqa: BLE001 - reported by the cell
        return f"*IDN? could not be sent: {exc!r}"
    while time.monotonic() < deadline:
        try:
            if session.read(timeout=max(0.01, deadline - time.monotonic())).count(",") == 3:
                return None
        except Exception:  # noqa: BLE001 - a read timeout: the deadline decides
            continue
    return f"no answer to *IDN? within {limit:g} s"


def wait_for_owed_replies(rt: Any, iid: str) -> str | None:
    """After a 'reply delay' fault: wait (bounded) until the instrument has sent the replies it
    still owed. Returns None, or what did not happen."""
    if iid == "sim_dmm":
        return _resync_dmm(rt)
    sim = _sim(rt, iid)
    if isinstance(sim, SerialSimulator):
        if not support.wait_until(lambda: sim.replies_held_back() == 0, OWED_REPLIES_LIMIT):
            return f"{sim.replies_held_back()} replies still held back after {OWED_REPLIES_LIMIT} s"
    return None


def _legacy_stacks() -> str:
    """Where the legacy drivers' threads are now: what a driver that does not recover waits on."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if names.get(ident, "").startswith("legacy-"):
            parts.append(f"--- thread {names[ident]} ---")
            parts.append("".join(traceback.format_stack(frame)))
    return "\n".join(parts)


def _camera_plan(rt: Any, n: int, rng: random.Random) -> Generator:
    return bp.count([rt.devices["sim_camera"]], n)


TARGETS = (
    Target(
        "sim_stage_x", "sim_stage", _stage_plan, (*SERIAL_FAULTS, "error queue (ESP300 108)", *LAST)
    ),
    Target("sim_meter", "sim_meter", _meter_plan, (*SERIAL_FAULTS, "over range", *LAST)),
    Target(
        "sim_meter_legacy", "sim_meter", _legacy_meter_plan, (*SERIAL_FAULTS, "over range", *LAST)
    ),
    Target("sim_laser", "sim_laser", _laser_plan, (*SERIAL_FAULTS, "local mode", *LAST)),
    Target(
        "sim_rotators_a",
        "sim_rotators",
        _rotator_plan,
        (*SERIAL_FAULTS, "status 0B", "stall", *LAST),
    ),
    Target(
        "sim_dmm",
        "sim_dmm",
        _dmm_plan,
        (*SCPI_FAULTS, "error queue (SCPI -222)", *LAST),
        check=_dmm_values,
    ),
    Target("sim_camera", "sim_camera", _camera_plan, ("readout failure",)),
)
TARGET_BY_DEVICE = {t.device: t for t in TARGETS}


def fault(name: str) -> Fault:
    return COMMON.get(name) or SPECIFIC[name]


def cells() -> list[tuple[str, str]]:
    return [(t.device, f) for t in TARGETS for f in t.faults]


# --- one cell --------------------------------------------------------------------------------


@dataclass
class CellResult:
    device: str
    fault: str
    outcome: str  # completed | failed | aborted | hung | not injected
    message: str = ""
    events_before_end: int = 0
    injected_after: int = 0
    seconds: float = 0.0
    next_outcome: str = ""
    uid: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.device} x {self.fault}"

    def short(self) -> str:
        return self.outcome + ("" if not self.problems else " (!)")


class Campaign:
    """One runtime, many cells. ``run_cell`` returns a CellResult; nothing raises."""

    def __init__(self, rt: Any, *, seed: int = 0) -> None:
        self.rt = rt
        self.rng = random.Random(seed)
        self.ledger = support.RunLedger(keep_data=True)
        self._token = rt.RE.subscribe(self.ledger)
        model = rt.simulation.simulators["sim_dmm"]
        with model.lock:
            model.source_voltage = DMM_SOURCE_V
        self._armed: tuple[int, Callable[[], None]] | None = None
        self._injected_at: int | None = None
        self._inject_error: BaseException | None = None
        self.ledger.listeners.append(self._on_document)
        self.results: list[CellResult] = []
        self._unverified: CellResult | None = None
        """The previous cell, when its recovery is shown by this cell's run (see run_cell)."""
        self.scpi = support.ScpiErrorRecorder(rt.simulation.simulators["sim_dmm"])

    def close(self) -> None:
        self.rt.RE.unsubscribe(self._token)
        self.scpi.restore()

    def _on_document(self, name: str, doc: dict, record: Any) -> None:
        if self._armed is None or record is None:
            return
        after, inject = self._armed
        due = (name == "start" and after == 0) or (
            name == "event" and after > 0 and record.total >= after
        )
        if due:
            self._armed = None
            self._injected_at = record.total
            try:
                inject()
            except BaseException as exc:  # noqa: BLE001 - reported by the cell
                self._inject_error = exc

    def run_cell(
        self,
        device: str,
        fault_name: str,
        *,
        points: int = 3,
        inject_after: int = 1,
        next_run: bool = True,
    ) -> CellResult:
        """Run one cell. ``next_run=False``: the recovery run is the NEXT cell's run on the same
        instrument, up to its own fault (its first ``inject_after`` points must complete); this
        halves the runs of the short form. A failure there is reported by that next cell."""
        rt = self.rt
        target = TARGET_BY_DEVICE[device]
        flt = fault(fault_name)
        result = CellResult(device, fault_name, "not injected", injected_after=inject_after)
        if device == "sim_dmm" and self._unverified is None:
            out_of_step = _resync_dmm(rt)
            if out_of_step:
                result.problems.append(f"DMM connection out of step before the cell: {out_of_step}")
        # Start healthy: a legacy driver may still be reconnecting after the previous cell.
        not_settled = support.settle_legacy(rt, since=0.0, timeout=20.0)
        if not_settled:
            result.problems.append(
                f"legacy drivers unhealthy before the cell: {not_settled}\n{_legacy_stacks()}"
            )
        self._injected_at = None
        self._inject_error = None
        short = FaultTimeouts(rt, target.simulator)

        def inject() -> None:
            short.shorten()
            flt.inject(rt, target.simulator)

        self._armed = (inject_after, inject)
        hung = threading.Event()

        def on_hang() -> None:
            hung.set()
            result.problems.append(
                f"hung: the faulted run did not end within {CELL_LIMIT:g} s\n"
                + support.dump_threads()
            )
            support.abort_run_engine(rt.RE, f"fault campaign: {device} x {fault_name} hung")

        timer = threading.Timer(CELL_LIMIT, on_hang)
        timer.daemon = True
        error: BaseException | None = None
        t0 = time.monotonic()
        wall0 = time.time()
        timer.start()
        try:
            rt.RE(
                target.plan(rt, points, self.rng),
                campaign_label=f"{device} x {fault_name}",
            )
        except BaseException as exc:  # noqa: BLE001 - classified below
            error = exc
        finally:
            timer.cancel()
            self._armed = None
            result.seconds = time.monotonic() - t0
            try:
                flt.clear(rt, target.simulator)
            except Exception as exc:  # noqa: BLE001
                result.problems.append(f"clearing the fault failed: {exc!r}")
            short.restore()

        record = self.ledger.last()
        result.uid = record.uid if record is not None else None
        result.events_before_end = record.total if record is not None else 0
        if self._inject_error is not None:
            result.problems.append(f"injection failed: {self._inject_error!r}")
        self._classify(result, target, error, record, hung.is_set())
        if target.check is not None and record is not None:
            result.problems.extend(f"faulted run: {p}" for p in target.check(rt, record)[:3])
        previous, self._unverified = self._unverified, None
        if previous is not None:
            if previous.device == device and self._injected_at is not None:
                previous.next_outcome = "completed (up to the next cell's fault)"
            else:
                result.problems.append(
                    f"recovery from the previous cell ({previous.label}) failed: this run ended "
                    f"before its own fault"
                )
                previous.next_outcome = "failed (see the next cell)"

        # The next run, on the same runtime, fault cleared.
        if fault_name == "reply delay":
            owed = wait_for_owed_replies(rt, target.simulator)
            if owed:
                result.problems.append(f"after the fault was cleared: {owed}")
        not_settled = support.settle_legacy(rt, since=wall0, timeout=20.0)
        if not_settled:
            result.problems.append(
                f"legacy drivers not running again after 20 s: {not_settled}\n{_legacy_stacks()}"
            )
        if next_run:
            result.next_outcome = self._next_run(target, points)
            if result.next_outcome != "completed":
                result.problems.append(f"next run: {result.next_outcome}")
        else:
            self._unverified = result
        self.results.append(result)
        return result

    def _classify(
        self,
        result: CellResult,
        target: Target,
        error: BaseException | None,
        record: support.RunRecord | None,
        hung: bool,
    ) -> None:
        if self._injected_at is None:
            result.outcome = "not injected"
            cause = support.find_daqbridge_error(error) or error
            result.problems.append(
                f"the run ended after {result.events_before_end} events, before the fault "
                f"was due (after event {result.injected_after})"
                + (f": {type(cause).__name__}: {support.one_line(cause, 300)}" if error else "")
            )
            return
        if hung:
            result.outcome = "hung"
            return
        status = record.exit_status if record is not None else None
        if error is None:
            result.outcome = "completed"
            if status != "success":
                result.problems.append(f"RE returned but the run ended {status}")
            return
        result.outcome = "aborted" if status == "abort" else "failed"
        err = support.find_daqbridge_error(error)
        if err is None:
            result.message = f"{type(error).__name__}: {support.one_line(error, 300)}"
            result.problems.append(f"not a DaqbridgeError: {result.message}")
            return
        result.message = f"{type(err).__name__}: {support.one_line(err, 400)}"
        text = str(err)
        names = target.names(self.rt)
        if not any(name in text for name in names):
            result.problems.append(f"the message names neither of {names}: {text}")
        if status not in ("fail", "abort"):
            result.problems.append(f"RE raised but the run ended {status!r}")

    def _next_run(self, target: Target, points: int) -> str:
        try:
            self.rt.RE(
                target.plan(self.rt, points, self.rng),
                campaign_label=f"{target.device} after fault",
            )
        except BaseException as exc:  # noqa: BLE001
            err = support.find_daqbridge_error(exc) or exc
            return f"failed: {type(err).__name__}: {support.one_line(err, 300)}"
        record = self.ledger.last()
        if record is None or record.exit_status != "success":
            return f"ended {record.exit_status if record else None}"
        if record.total < points:
            return f"only {record.total} of {points} events"
        if target.check is not None:
            wrong = target.check(self.rt, record)
            if wrong:
                return "completed with wrong values: " + "; ".join(wrong[:3])
        return "completed"

    def check_catalog(self, limit: int | None = None) -> int:
        """Every faulted run's emitted events must be in the catalog (one flush for all).

        Reading a run back costs 0.1-0.7 s on the shared machine, so ``limit`` samples: first
        the failed runs that had emitted events before the fault (the data that must survive),
        one per instrument, then the rest at random. Returns the number of runs checked.
        """
        self.rt.catalog.flush(timeout=120)
        results = [r for r in self.results if r.uid is not None]
        if limit is not None and len(results) > limit:
            first: dict[str, CellResult] = {}
            for r in results:
                if r.outcome == "failed" and r.events_before_end > 0:
                    first.setdefault(r.device, r)
            chosen = list(first.values())[:limit]
            rest = [r for r in results if r not in chosen]
            chosen += self.rng.sample(rest, max(0, limit - len(chosen)))
            results = chosen
        for res in results:
            lost = support.compare_with_catalog(self.rt.catalog, [self.ledger.runs[res.uid]])
            res.problems.extend(f"catalog: {p}" for p in lost)
        return len(results)


# --- the table -------------------------------------------------------------------------------


def outcome_table(results: list[CellResult], markdown: bool = False) -> list[str]:
    """Instrument x fault -> outcome; one line per instrument, then every failure message."""
    faults = []
    for t in TARGETS:
        for f in t.faults:
            short = fault(f).name
            if short not in faults:
                faults.append(short)
    by_cell: dict[tuple[str, str], list[CellResult]] = {}
    for r in results:
        by_cell.setdefault((r.device, fault(r.fault).name), []).append(r)

    def cell(device: str, name: str) -> str:
        rs = by_cell.get((device, name))
        if not rs:
            return "-"
        kinds = sorted({r.short() for r in rs})
        return "/".join(kinds) if len(rs) == 1 else "/".join(kinds) + f" x{len(rs)}"

    lines = []
    if markdown:
        lines.append("| instrument | " + " | ".join(faults) + " |")
        lines.append("|---" * (len(faults) + 1) + "|")
        for t in TARGETS:
            lines.append(f"| {t.device} | " + " | ".join(cell(t.device, f) for f in faults) + " |")
    else:
        width = max(len(f) for f in faults)
        width = max(width, 10)
        lines.append("instrument".ljust(17) + "".join(f.ljust(width + 1) for f in faults))
        for t in TARGETS:
            lines.append(
                t.device.ljust(17) + "".join(cell(t.device, f).ljust(width + 1) for f in faults)
            )
    lines.append("")
    lines.append("failures and aborts (first message per cell):")
    seen = set()
    for r in results:
        if r.outcome in ("failed", "aborted") and (r.device, r.fault) not in seen:
            seen.add((r.device, r.fault))
            lines.append(f"  {r.label}: {support.one_line(r.message, 160)}")
    problems = [r for r in results if r.problems]
    if problems:
        lines.append("")
        lines.append("invariant violations:")
        for r in problems:
            for p in r.problems:
                lines.append(f"  {r.label}: {support.one_line(p, 200)}")
    return lines
