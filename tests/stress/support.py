"""Shared machinery of the stress campaigns: sizes, watchdog, run ledger, invariant checks.

Why these pieces exist:

* ``Size``: every campaign has a bounded short form (``ci_short``, in the default test run) and
  a long form (``stress``, on demand). The long form's size comes from environment variables, so
  a night run is ``DAQBRIDGE_STRESS_SECONDS=3600 pytest -m stress tests/stress``; the short form
  is fixed, so nobody can make CI unbounded by leaving a variable set.
* ``Watchdog``: a deadlock in the lab is a hang, and a hanging test is the worst way to learn
  about it. Every actor (the RunEngine, each manual thread) beats; an actor that stays silent for
  ``limit`` seconds gets every thread's stack dumped, the RunEngine aborted and the test failed,
  instead of pytest-timeout killing the process with no stack of the culprit.
* ``RunLedger``: counts what the RunEngine *emitted* per run and stream, independently of the
  catalog, so "no lost event" compares two sources instead of the catalog with itself.
* ``find_daqbridge_error``: what a scientist sees when a run fails is the exception ``RE(...)``
  raises. A clear failure has a DaqbridgeError naming the instrument somewhere in that chain
  (bluesky wraps a failed status in ``FailedStatus(status) from error``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daqbridge.errors import DaqbridgeError

REPO = Path(__file__).resolve().parents[2]
SIM_PROFILE = REPO / "profiles" / "sim.toml"

SERIAL_SIMULATED = ("sim_stage", "sim_meter", "sim_laser", "sim_rotators")
"""Instruments of profiles/sim.toml behind a serial simulator (they keep ``protocol_errors``)."""


# --- sizes -----------------------------------------------------------------------------------


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Size:
    """How big one campaign run is; ``long`` reads the environment, ``short`` never does."""

    form: str  # "short" | "long"
    seconds: float = 0.0
    points: int = 0
    kills: int = 0
    repeats: int = 1
    cycles: int = 1

    @property
    def long(self) -> bool:
        return self.form == "long"


def stress_seed() -> int:
    raw = os.environ.get("DAQBRIDGE_STRESS_SEED")
    return int(raw) if raw else int(time.time() * 1000) % 1_000_000


# --- watchdog --------------------------------------------------------------------------------


def dump_threads() -> str:
    """Every thread's name and stack, as text (what faulthandler prints, but with names)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, '?')} ({ident}) ---")
        parts.append("".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class Watchdog:
    """Fails a campaign, with every thread's stack, when an actor makes no progress for ``limit`` s.

    ``beat(actor)`` records progress; ``idle(actor)`` says the actor is legitimately waiting for
    nothing (finished). On a stall the ``on_stall`` callbacks run once (abort the RunEngine, set
    stop flags) so the test ends with a report instead of hanging.
    """

    def __init__(self, limit: float, *, name: str = "stress") -> None:
        self.limit = float(limit)
        self.name = name
        self.stalls: list[str] = []
        self.on_stall: list[Callable[[], None]] = []
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watchdog-{name}", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def beat(self, actor: str) -> None:
        self._beats[actor] = time.monotonic()  # a dict store: atomic under the GIL

    def idle(self, actor: str) -> None:
        with self._lock:
            self._beats.pop(actor, None)

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = {a: now - t for a, t in self._beats.items() if now - t > self.limit}
            if not late:
                continue
            report = (
                f"watchdog {self.name}: no progress for "
                + ", ".join(f"{a} ({s:.1f} s)" for a, s in sorted(late.items()))
                + f" (limit {self.limit:g} s)\n"
                + dump_threads()
            )
            self.stalls.append(report)
            for action in self.on_stall:
                try:
                    action()
                except Exception as exc:  # noqa: BLE001 - report and keep going
                    self.stalls.append(f"on_stall action failed: {exc!r}")
            return  # one report is enough; the test fails on it

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self) -> None:
        if self.stalls:
            raise AssertionError("\n".join(self.stalls))


def abort_run_engine(RE: Any, reason: str) -> None:
    """Abort a running plan from another thread (what the watchdog does on a stall)."""
    from bluesky.utils import TransitionError

    if str(RE.state) == "idle":
        return
    try:
        RE.abort(reason=reason)
    except TransitionError:
        pass


# --- documents -------------------------------------------------------------------------------


@dataclass
class RunRecord:
    uid: str
    plan_name: str
    events: Counter = field(default_factory=Counter)  # stream -> events emitted
    exit_status: str | None = None
    reason: str = ""
    stop_num_events: dict[str, int] = field(default_factory=dict)
    data: list[dict] = field(default_factory=list)  # event data, when the ledger keeps it

    @property
    def total(self) -> int:
        return sum(self.events.values())


class RunLedger:
    """A RunEngine subscriber that counts emitted events per run and stream.

    ``listeners`` are called with ``(name, doc, record)`` after counting (the fault campaign arms
    its injections there; the watchdog beats there).
    """

    def __init__(self, *, keep_data: bool = False) -> None:
        self.keep_data = keep_data
        self.runs: dict[str, RunRecord] = {}
        self.order: list[str] = []
        self._streams: dict[str, tuple[str, str]] = {}
        self.listeners: list[Callable[[str, dict, RunRecord | None], None]] = []

    def __call__(self, name: str, doc: dict) -> None:
        record: RunRecord | None = None
        if name == "start":
            label = doc.get("campaign_label") or doc.get("plan_name")
            record = self.runs[doc["uid"]] = RunRecord(doc["uid"], str(label))
            self.order.append(doc["uid"])
        elif name == "descriptor":
            self._streams[doc["uid"]] = (doc["run_start"], doc.get("name", "primary"))
            record = self.runs.get(doc["run_start"])
        elif name in ("event", "event_page"):
            run_uid, stream = self._streams[doc["descriptor"]]
            record = self.runs[run_uid]
            record.events[stream] += 1 if name == "event" else len(doc["seq_num"])
            if self.keep_data and name == "event":
                record.data.append(dict(doc["data"]))
        elif name == "stop":
            record = self.runs.get(doc["run_start"])
            if record is not None:
                record.exit_status = doc.get("exit_status")
                record.reason = doc.get("reason", "")
                record.stop_num_events = dict(doc.get("num_events") or {})
        for listener in tuple(self.listeners):
            listener(name, doc, record)

    def last(self) -> RunRecord | None:
        return self.runs[self.order[-1]] if self.order else None


def catalog_event_counts(catalog: Any, uid: str) -> dict[str, int]:
    """Events per stream as read back from the catalog's tables (not from the stop document)."""
    run = catalog.client[uid]
    counts: dict[str, int] = {}
    for stream in list(run):
        node = run[stream]
        base = getattr(node, "base", node)
        try:
            table = base["internal"]
        except KeyError:
            counts[stream] = 0
            continue
        counts[stream] = len(table.read(["seq_num"]))
    return counts


def compare_with_catalog(catalog: Any, records: Iterable[RunRecord]) -> list[str]:
    """Runs whose events in the catalog differ from the events the RunEngine emitted."""
    problems = []
    for rec in records:
        try:
            stored = catalog_event_counts(catalog, rec.uid)
        except Exception as exc:  # noqa: BLE001 - reported as a lost run
            problems.append(f"run {rec.uid[:8]} ({rec.plan_name}): not readable: {exc!r}")
            continue
        emitted = {k: v for k, v in rec.events.items() if v}
        stored = {k: v for k, v in stored.items() if v}
        if emitted != stored:
            problems.append(
                f"run {rec.uid[:8]} ({rec.plan_name}): emitted {emitted}, catalog {stored}"
            )
    return problems


# --- errors ----------------------------------------------------------------------------------


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        todo.extend([e.__cause__, e.__context__])
        for arg in getattr(e, "args", ()):
            # bluesky's FailedStatus(status): the status carries the device's exception
            get = getattr(arg, "exception", None)
            if callable(get):
                try:
                    todo.append(get(timeout=0))
                except Exception:  # noqa: BLE001
                    pass
    return chain


def find_daqbridge_error(exc: BaseException | None) -> DaqbridgeError | None:
    for e in exception_chain(exc):
        if isinstance(e, DaqbridgeError):
            return e
    return None


def one_line(text: str, limit: int = 110) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- simulators ------------------------------------------------------------------------------


class ScpiErrorRecorder:
    """Records every error the SCPI model queues (the driver may pop them with SYST:ERR?).

    A -1xx command error means the instrument received something that is not a command:
    interleaved or corrupted traffic. The simulator has no ``protocol_errors`` list, so this is
    how the campaigns count unknown commands on it.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.codes: list[int] = []
        self._original = model.queue_error

        def recording(code: int, message: str | None = None) -> None:
            self.codes.append(int(code))
            self._original(code, message)

        model.queue_error = recording

    @property
    def command_errors(self) -> list[int]:
        return [c for c in self.codes if -199 <= c <= -100]

    def restore(self) -> None:
        self.model.__dict__.pop("queue_error", None)


def protocol_problems(rt: Any, scpi: ScpiErrorRecorder | None = None) -> list[str]:
    """Interleaved or malformed traffic seen by the simulators, and simulator crashes."""
    problems = []
    sims = rt.simulation.simulators
    for iid, sim in sims.items():
        errors = getattr(sim, "protocol_errors", None)
        if errors:
            problems.append(f"{iid}: protocol_errors {list(errors)[:5]} ({len(errors)} in all)")
        spacing = getattr(sim, "spacing_violations", None)
        if spacing:
            problems.append(f"{iid}: Elliptec move spacing violated {len(spacing)} times")
    for iid, server in rt.simulation.servers.items():
        errors = getattr(server, "errors", None)
        if errors:
            problems.append(f"{iid}: simulator raised {[repr(e) for e in errors][:3]}")
    if scpi is not None and scpi.command_errors:
        problems.append(f"sim_dmm: SCPI command errors {scpi.command_errors[:10]}")
    return problems


def serial_port_of(rt: Any, instrument: str) -> Any:
    """The SharedSerialPort the runtime opened for an instrument (native and legacy share it)."""
    url = rt.simulation.ports.get(instrument) if rt.simulation is not None else None
    if url is None:
        inst = next(i for i in rt.profile.instruments if i.id == instrument)
        url = inst.port
    for port in rt.resources.pool.ports.values():
        if url in port.aliases or port.url == url:
            return port
    raise KeyError(f"no open port for {instrument} ({url})")


# --- process resources -----------------------------------------------------------------------


def open_fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the fd of the listdir itself, closed meanwhile
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def copy_catalog(template: Path, target: Path) -> Path:
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("wal"))
    return target


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def settle_legacy(rt: Any, *, since: float, timeout: float = 20.0) -> dict[str, str]:
    """Wait (bounded) until the legacy drivers have recovered by themselves from a fault.

    A legacy driver whose poll failed restarts with a back-off, and commands sent meanwhile fail
    at once ("instrument is restarting", by design: docs/legacy.md). So before the next run:
    no operation begun before this call may still be running (a poll sent into the fault times
    out later), and every driver with an error since ``since`` (wall time) must be running again
    with a measurement newer than that error. Returns the drivers that did not get there.
    """
    if rt.legacy is None:
        return {}
    t_call = time.monotonic()

    def pending() -> dict[str, str]:
        out = {}
        now = time.monotonic()
        for iid, h in rt.legacy.health().items():
            busy = h.get("busy_for")
            if h.get("activity") and busy is not None and now - busy < t_call:
                out[iid] = f"still busy in {h['activity']} begun during the fault"
            elif h.get("state") != "running":
                out[iid] = str(h.get("state"))
            else:
                err = h.get("last_error_time")
                seen = h.get("last_measurement_time")
                if err is not None and err >= since and (seen is None or seen <= err):
                    out[iid] = "no measurement since its last error"
        return out

    wait_until(lambda: not pending(), timeout, 0.02)
    return pending()


# --- runtimes --------------------------------------------------------------------------------

CONNECT_TIMEOUT = 30.0
"""Instruments' connection deadline at start-up: generous, the machine is shared and loaded."""


RUNTIMES_STARTED = 0
"""Runtimes started in this process (the leak campaign needs one before its baseline)."""


def start_runtime(profile: Any, data_dir: Path, **options: Any) -> Any:
    global RUNTIMES_STARTED
    from daqbridge.runtime import Runtime

    options.setdefault("connect_timeout", CONNECT_TIMEOUT)
    rt = Runtime.from_profile(profile, data_dir=data_dir, **options)
    rt.sd.baseline = []  # a campaign's runs touch only the instrument under test
    RUNTIMES_STARTED += 1
    return rt


# --- profiles --------------------------------------------------------------------------------


def lab_profile_text(
    tag: str,
    *,
    timeouts: dict[str, float] | None = None,
    speed: float | None = None,
    source: Path = SIM_PROFILE,
) -> str:
    """profiles/sim.toml with process-unique simulator names and, optionally, other timeouts.

    Simulators are registered by name process-wide, so two runtimes built from the same file in
    one process would share the ``sim://`` instruments; the campaigns each get their own.
    ``timeouts`` maps instrument ids to their ``timeout`` (reply timeout): the fault campaign
    shortens them so a fault costs a fraction of a second, not the lab's defaults.
    """
    text = source.read_text()
    text = re.sub(r"(sim://\w+\?name=)(\w+)", rf"\g<1>\g<2>_{tag}", text)
    if speed is not None:
        text = re.sub(r"(?m)^speed = .*$", f"speed = {speed}", text, count=1)
    for iid, value in (timeouts or {}).items():
        text, n = re.subn(rf'(?m)^(id = "{re.escape(iid)}"\n)', rf"\g<1>timeout = {value}\n", text)
        if n != 1:
            raise ValueError(f"instrument {iid!r} not found in {source}")
    return text


# --- reporting -------------------------------------------------------------------------------

REPORT: list[tuple[str, list[str]]] = []
"""Sections printed at the end of the pytest session (tests/stress/conftest.py)."""


def report(title: str, lines: Iterable[str]) -> None:
    REPORT.append((title, list(lines)))
