"""Ordered shutdown with a deadline per phase, and the signal handling that starts it.

Why it is built this way:

* Each phase runs on its own thread and the caller waits at most the phase's deadline: a driver
  that hangs in ``disconnect()`` (it happens: a USB adapter that vanished mid-read) must not keep
  the lab's ports, the catalog and the simulators from being released. The hung thread is left
  behind (a daemon) and the phase is reported as ``forced``; the next phase starts on time.
* The order is fixed (``PHASES``): stop the plan, then the native devices (motion stopped,
  shutter closed), then the legacy drivers, then flush the catalog, then close the ports every
  stack shared, then the simulators. Ports close only after both stacks have stopped using them,
  and the catalog is flushed only after the last document of an aborted run was emitted.
* The outcome of every phase is kept in a :class:`ShutdownReport` (logged and returned), so a lab
  can see after the fact which driver hung and for how long.
* Ctrl-C in the command-line tools means "abort the run, keep its data, shut down in order". The
  handler never does work itself (a signal handler runs between two bytecodes of whatever the
  main thread was doing): it asks the RunEngine to abort from a helper thread, and the main
  thread's ``Runtime.run()`` turns the interrupted run into :class:`ShutdownRequested`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from daqbridge.errors import ShutdownError

if TYPE_CHECKING:
    from daqbridge.runtime._runtime import Runtime

log = logging.getLogger("daqbridge.runtime.shutdown")

PHASES: tuple[str, ...] = ("run_engine", "native", "legacy", "catalog", "resources", "simulators")
"""Shutdown phases, in order; the keys of the profile's ``[shutdown]`` table."""

Outcome = Literal["ok", "failed", "forced", "skipped"]


class PhaseForced(ShutdownError):
    """Raised by a phase action that gave up on something itself (e.g. legacy stragglers).

    The phase is then reported as ``forced`` with this message, like a phase that overran.
    """


@dataclass(frozen=True)
class Skipped:
    """Returned by a phase action when there was nothing to do (and why)."""

    why: str


@dataclass
class PhaseOutcome:
    """What one shutdown phase did."""

    phase: str
    outcome: Outcome
    deadline: float
    duration: float
    detail: str = ""
    error: BaseException | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "outcome": self.outcome,
            "deadline": self.deadline,
            "duration": round(self.duration, 4),
            "detail": self.detail,
        }


@dataclass
class ShutdownReport:
    """Per-phase outcome of one ordered shutdown; ``clean`` when nothing was forced or failed."""

    reason: str
    started_at: float
    phases: list[PhaseOutcome] = field(default_factory=list)
    duration: float = 0.0

    @property
    def clean(self) -> bool:
        return all(p.outcome in ("ok", "skipped") for p in self.phases)

    @property
    def forced(self) -> list[str]:
        return [p.phase for p in self.phases if p.outcome == "forced"]

    @property
    def failed(self) -> list[str]:
        return [p.phase for p in self.phases if p.outcome == "failed"]

    def phase(self, name: str) -> PhaseOutcome:
        for p in self.phases:
            if p.phase == name:
                return p
        raise KeyError(f"no shutdown phase {name!r}; phases: {', '.join(PHASES)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "started_at": self.started_at,
            "duration": round(self.duration, 4),
            "clean": self.clean,
            "phases": [p.as_dict() for p in self.phases],
        }

    def format(self) -> str:
        """A small table for the terminal and the log."""
        head = "clean" if self.clean else "NOT clean"
        lines = [f"shutdown ({self.reason}): {head}, {self.duration:.2f} s"]
        for p in self.phases:
            lines.append(
                f"  {p.phase:<11} {p.outcome:<8} {p.duration:6.2f} s / {p.deadline:g} s"
                + (f"  {p.detail}" if p.detail else "")
            )
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """Raise ShutdownError naming every forced or failed phase (for callers that want one)."""
        bad = [p for p in self.phases if p.outcome in ("forced", "failed")]
        if not bad:
            return
        what = "; ".join(f"{p.phase} {p.outcome}: {p.detail}" for p in bad)
        raise ShutdownError(
            f"the shutdown was not clean: {what}.",
            fix="see which driver or resource hung in the report; the data written so far is in "
            "the catalog or its write-ahead log (recovered on the next start).",
        )


def run_phase(
    phase: str, action: Callable[[], Any], deadline: float, *, on_thread: bool = True
) -> PhaseOutcome:
    """Run ``action`` for at most ``deadline`` seconds and say how it went.

    ``action`` returns None or a detail text (ok), a :class:`Skipped` (skipped), or raises
    :class:`PhaseForced` (forced) or anything else (failed). If it is still running at the
    deadline, the thread is abandoned (a daemon) and the phase is ``forced``.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:  # noqa: BLE001 - reported in the outcome, never lost
            box["error"] = exc

    t0 = time.monotonic()
    if on_thread:
        worker = threading.Thread(target=target, name=f"daqbridge-shutdown-{phase}", daemon=True)
        worker.start()
        worker.join(deadline)
        hung = worker.is_alive()
    else:
        target()
        hung = False
    duration = time.monotonic() - t0
    if hung:
        outcome = PhaseOutcome(
            phase,
            "forced",
            deadline,
            duration,
            f"still running after its deadline of {deadline:g} s; abandoned (left on a daemon "
            "thread) so the next phases could run",
        )
    elif "error" in box:
        exc = box["error"]
        text = getattr(exc, "what", None) or f"{type(exc).__name__}: {exc}"
        kind: Outcome = "forced" if isinstance(exc, PhaseForced) else "failed"
        outcome = PhaseOutcome(phase, kind, deadline, duration, str(text), exc)
    else:
        result = box.get("result")
        if isinstance(result, Skipped):
            outcome = PhaseOutcome(phase, "skipped", deadline, duration, result.why)
        else:
            outcome = PhaseOutcome(
                phase, "ok", deadline, duration, "" if result is None else str(result)
            )
    level = logging.INFO if outcome.outcome in ("ok", "skipped") else logging.ERROR
    log.log(
        level,
        "shutdown phase %s: %s in %.2f s (deadline %g s)%s",
        phase,
        outcome.outcome,
        duration,
        deadline,
        f": {outcome.detail}" if outcome.detail else "",
    )
    return outcome


class ShutdownRequested(KeyboardInterrupt):  # noqa: N818 - it is a request, like KeyboardInterrupt
    """A signal (Ctrl-C, SIGTERM) asked the runtime to stop; the running plan was aborted.

    Raised by :meth:`Runtime.run` in the main thread once the RunEngine has closed the run (as
    ``abort``, its data kept), whatever the RunEngine itself raised on the way out (a device
    whose stop failed the status the plan waited for is part of the abort, not a new failure).
    A KeyboardInterrupt on purpose: code that already treats Ctrl-C as "leave" (``with
    Runtime...:`` blocks, the CLI) does the ordered shutdown on its way out.

    ``exit_statuses`` maps the uid of every run the plan opened to the exit status its stop
    document recorded (None if it has none), so a caller says what the catalog says: a signal
    that arrived as the last point was taken leaves a run that ended ``success``. ``error`` is
    what the RunEngine raised while stopping, if anything besides the interruption.
    """

    def __init__(
        self,
        signum: int,
        uids: Iterable[str] | Mapping[str, str | None] = (),
        *,
        error: BaseException | None = None,
    ) -> None:
        self.signum = signum
        self.signal_name = _signal_name(signum)
        if isinstance(uids, Mapping):
            self.exit_statuses: dict[str, str | None] = dict(uids)
        else:
            self.exit_statuses = dict.fromkeys(uids, "abort")
        self.uids = tuple(self.exit_statuses)
        self.error = error
        super().__init__(self._describe())

    @property
    def aborted(self) -> bool:
        """True unless every run the plan opened had ended otherwise before the signal won."""
        statuses = set(self.exit_statuses.values())
        return not statuses or "abort" in statuses or None in statuses

    def _describe(self) -> str:
        head = f"{self.signal_name} received: "
        if not self.exit_statuses:
            return head + "the plan was stopped before it opened a run"
        if all(status == "abort" for status in self.exit_statuses.values()):
            return head + (
                f"the running plan was aborted (runs kept, marked 'abort': {', '.join(self.uids)})"
            )
        ended = ", ".join(
            f"{uid} {status!r}" if status else f"{uid} (no stop document)"
            for uid, status in self.exit_statuses.items()
        )
        return head + f"the plan was stopped (runs kept, exit status: {ended})"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalHandlers:
    """SIGINT/SIGTERM handlers that abort the running plan, then let the runtime shut down.

    * A run in progress (or ``Runtime.run()`` under way): the first signal asks the RunEngine to
      abort (on a helper thread; the RunEngine stops every device it moved and closes the run as
      ``abort``, data kept). If the RunEngine is not idle after the ``[shutdown] run_engine``
      deadline, it is halted. The main thread's ``Runtime.run()`` then raises
      :class:`ShutdownRequested`. Further signals while the abort is under way only say so.
    * Whichever thread the kernel hands the signal to, Python runs this handler on the main
      thread; the runtime's RunEngine waits for its plan in short slices so that the main thread
      gets there within a fraction of a second, not when the plan ends.
    * No run: SIGINT raises KeyboardInterrupt and SIGTERM SystemExit(128 + signum) in the main
      thread, so ``with`` blocks and atexit run the ordered shutdown.
    * During the shutdown itself: ignored (the shutdown is already bounded by its deadlines).

    While a plan runs with bluesky's own SigintHandler (``sigint="pause"``), that handler has
    SIGINT and gives the usual pause semantics; SIGTERM still comes here.
    """

    def __init__(self, runtime: Runtime, signals: Iterable[int]) -> None:
        self._runtime = runtime
        self.signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._lock = threading.Lock()
        self.received: list[int] = []
        self._aborting = False
        self._insist = 0

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> None:
        if self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            raise ShutdownError(
                "signal handlers can only be installed from the main thread.",
                fix="call Runtime.install_signal_handlers() from the main thread (the CLI does).",
            )
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # cannot touch handlers here; the process is ending anyway
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        rt = self._runtime
        self.received.append(signum)
        name = _signal_name(signum)
        if rt.closing or rt.closed:
            log.warning("%s received during shutdown: ignored (every phase has a deadline)", name)
            return
        # Inside Runtime.run() counts as a run even while the RunEngine is still idle (the plan
        # not started yet, or its last document just sent): raising SystemExit there would escape
        # run() instead of ending as ShutdownRequested.
        if rt.plan_running() or rt._in_run:
            rt._shutdown_signal = signum
            if rt._in_run:
                rt._run_signal = signum
            with self._lock:
                first = not self._aborting
                self._aborting = True
            if first:
                log.warning("%s received: aborting the run (data kept), then shutting down", name)
                threading.Thread(
                    target=self._abort, args=(name,), name="daqbridge-abort", daemon=True
                ).start()
            else:
                log.warning("%s received: the run is already being aborted; please wait", name)
            return
        if rt._shutdown_signal is not None:
            # A shutdown is already on its way (the main thread is unwinding to it): do not
            # interrupt that, unless the user insists.
            self._insist += 1
            if self._insist < 3:
                log.warning(
                    "%s received: shutting down already (%d more to force)", name, 3 - self._insist
                )
                return
        rt._shutdown_signal = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _abort(self, name: str) -> None:
        rt = self._runtime
        try:
            rt._abort_signalled_plan(
                reason=f"{name} received", deadline=rt.profile.shutdown.run_engine
            )
        except Exception:  # noqa: BLE001 - a failed abort is logged; shutdown still follows
            log.exception("aborting the run after %s failed", name)
        finally:
            with self._lock:
                self._aborting = False
