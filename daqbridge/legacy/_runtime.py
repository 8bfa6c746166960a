"""Runs legacy instruments: polling, commands, crash recovery and ordered shutdown.

Threading model (chosen over one shared asyncio loop with an executor): ONE worker thread per
instrument. The worker owns its instrument: it connects it, polls it at the configured rate,
carries out submitted commands between polls, and disconnects it. Why:
- legacy drivers are not thread-safe; serialising every call of one instrument on one thread means
  no driver needs a lock, and a command never interleaves with a poll of the same instrument;
- a hung instrument (a read with no timeout, a firmware lock-up) blocks only its own thread: the
  others keep polling, ``submit`` to it times out with a clear error, and ``stop`` reports it as a
  straggler instead of hanging (Python threads cannot be killed; the worker is a daemon thread);
- nothing ever runs on the caller's thread or event loop: ``submit`` hands the command over and
  waits on a future, ``submit_async`` awaits the same future without blocking the loop.
Costs: one thread per instrument (a lab has tens, not thousands), and a long command (a move
waiting for its end) delays that instrument's polls until it finishes; ``halt`` calls the
driver's ``stop()`` from another thread for exactly that case.

Crash recovery: if ``connect`` or ``poll`` raises, the worker disconnects the instrument, waits a
back-off (0.1 s doubling up to 5 s by default), reconnects and resumes polling; a successful poll
resets the back-off. After ``max_restarts`` consecutive failures (unbounded by default: a lab wants
an unplugged meter back once it is plugged in again) the instrument is marked failed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daqbridge.errors import ConfigError, DaqbridgeError, InstrumentTimeout
from daqbridge.legacy._command import Command, CommandResult, LegacyInstrumentError
from daqbridge.legacy._distributor import DataDistributor
from daqbridge.legacy._instrument import LegacyInstrument
from daqbridge.legacy._measurement import Measurement

if TYPE_CHECKING:
    from daqbridge.legacy._config import LegacyConfig

log = logging.getLogger("daqbridge.legacy.runtime")

HealthListener = Callable[[str, dict[str, Any]], Any]


class InstrumentState(enum.StrEnum):
    PENDING = "pending"  # added, runtime not started
    CONNECTING = "connecting"
    RUNNING = "running"
    RESTARTING = "restarting"  # crashed, waiting out the back-off before reconnecting
    FAILED = "failed"  # gave up after max_restarts consecutive failures
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential back-off between restarts of a crashed poller."""

    initial_delay: float = 0.1
    max_delay: float = 5.0
    factor: float = 2.0
    max_restarts: int | None = None
    """Consecutive failures tolerated before the instrument is marked failed (None: never)."""

    def __post_init__(self) -> None:
        if not (0 < self.initial_delay <= self.max_delay) or self.factor < 1:
            raise ValueError(
                f"restart policy needs 0 < initial_delay <= max_delay and factor >= 1, got {self}"
            )
        if self.max_restarts is not None and self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0 or None, got {self.max_restarts}")

    def delay(self, consecutive_failures: int) -> float:
        n = max(0, consecutive_failures - 1)
        return min(self.max_delay, self.initial_delay * self.factor**n)


@dataclass(frozen=True)
class StopReport:
    """What ``LegacyRuntime.stop`` achieved: ``stragglers`` maps instrument id to where it hung."""

    clean: bool
    stragglers: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0


class _Job:
    __slots__ = ("command", "future", "submitted")

    def __init__(self, command: Command) -> None:
        self.command = command
        self.future: concurrent.futures.Future[CommandResult] = concurrent.futures.Future()
        self.submitted = time.monotonic()


_WAKE = object()  # put in an inbox to make its worker look at its stop flags
_RESET = object()  # put in an inbox to retry a failed instrument now


class _Worker:
    """The thread that owns one instrument."""

    def __init__(
        self,
        runtime: LegacyRuntime,
        instrument: LegacyInstrument,
        polling_rate_hz: float,
        policy: RestartPolicy,
    ) -> None:
        self.runtime = runtime
        self.instrument = instrument
        self.id = instrument.instrument_id
        self.polling_rate_hz = polling_rate_hz
        self.period = 1.0 / polling_rate_hz if polling_rate_hz > 0 else None
        self.policy = policy
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stop_polling = threading.Event()
        self.may_disconnect = threading.Event()
        self.parked = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"legacy-{self.id}", daemon=True)
        self._lock = threading.Lock()
        self.state = InstrumentState.PENDING
        self.connected = False
        self.restarts = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.last_measurement_time: float | None = None
        self.polls = 0
        self.measurements = 0
        self.activity: str | None = None
        self.activity_since: float | None = None
        self._retry_at = 0.0

    # --- reporting ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            busy = (
                None
                if self.activity is None or self.activity_since is None
                else round(time.monotonic() - self.activity_since, 3)
            )
            return {
                "state": str(self.state),
                "restarts": self.restarts,
                "consecutive_failures": self.consecutive_failures,
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
                "last_measurement_time": self.last_measurement_time,
                "polling_rate_hz": self.polling_rate_hz,
                "polls": self.polls,
                "measurements": self.measurements,
                "activity": self.activity,
                "busy_for": busy,
            }

    def _set_state(self, state: InstrumentState) -> None:
        with self._lock:
            changed = state != self.state
            self.state = state
        if changed:
            self.runtime._notify(self.id, self.health())

    def _begin(self, activity: str) -> None:
        with self._lock:
            self.activity = activity
            self.activity_since = time.monotonic()

    def _end(self) -> None:
        with self._lock:
            self.activity = None
            self.activity_since = None

    def publish(self, m: Measurement) -> None:
        with self._lock:
            self.last_measurement_time = m.timestamp
            self.measurements += 1
        self.runtime.distributor.publish(m)

    # --- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # pragma: no cover - a bug in the worker itself
            log.exception("legacy worker of %r died", self.id)
        finally:
            self._set_state(InstrumentState.STOPPING)
            self.parked.set()
        self.may_disconnect.wait()
        if self.connected:
            self._disconnect("shutdown")
        self._fail_pending("the legacy runtime stopped")
        self._set_state(InstrumentState.STOPPED)
        self.done.set()

    def _serve(self) -> None:
        next_poll = time.monotonic()
        # A poll slower than its period would otherwise run back to back forever and starve
        # commands; when both are waiting they alternate (one command, then one poll).
        commanded_since_poll = False
        while not self.stop_polling.is_set():
            now = time.monotonic()
            if not self.connected and self.state is not InstrumentState.FAILED:
                if now >= self._retry_at:
                    if self._connect():
                        next_poll = time.monotonic()
                    continue
                timeout: float | None = self._retry_at - now
            elif self.connected and self.period is not None:
                if now >= next_poll and (commanded_since_poll or self.inbox.empty()):
                    commanded_since_poll = False
                    if self._poll():
                        next_poll += self.period
                        # Behind by more than a period (a slow poll or command): skip, do not burst.
                        if next_poll < time.monotonic() - self.period:
                            next_poll = time.monotonic()
                    continue
                timeout = max(0.0, next_poll - now)
            else:
                timeout = None  # command-only instrument, or failed: wait for work or stop
            try:
                item = self.inbox.get(timeout=timeout)
            except queue.Empty:
                continue
            if item is _WAKE:
                continue
            if item is _RESET:
                with self._lock:
                    self.consecutive_failures = 0
                self._retry_at = 0.0
                if self.state is InstrumentState.FAILED:
                    self._set_state(InstrumentState.RESTARTING)
                continue
            commanded_since_poll = True
            self._execute(item)

    def _connect(self) -> bool:
        first = self.restarts == 0 and self.consecutive_failures == 0
        if not first:
            with self._lock:
                self.restarts += 1
            log.info("%s: restarting (restart %d)", self.id, self.restarts)
        self._set_state(InstrumentState.CONNECTING if first else InstrumentState.RESTARTING)
        self._begin("connect")
        try:
            self.instrument.connect()
        except Exception as exc:
            self._end()
            self._crashed("connect", exc)
            return False
        self._end()
        self.connected = True
        if self.period is None:
            with self._lock:
                self.consecutive_failures = 0
        self._set_state(InstrumentState.RUNNING)
        return True

    def _poll(self) -> bool:
        self._begin("poll")
        try:
            measurements = self.instrument.poll()
            if measurements is None:
                measurements = []
            if not isinstance(measurements, list | tuple):
                raise LegacyInstrumentError(
                    f"driver bug: poll() returned {type(measurements).__name__}, not a list",
                    instrument=self.id,
                    fix="make poll() return a list of Measurement.",
                )
            for m in measurements:
                self.publish(m)
        except Exception as exc:
            # Still busy until the failure is on record (_crashed ends the activity): health()
            # must never show this moment as an idle, running driver.
            self._crashed("poll", exc)
            return False
        self._end()
        with self._lock:
            self.polls += 1
            self.consecutive_failures = 0
        return True

    def _crashed(self, phase: str, exc: Exception) -> None:
        text = f"{phase}: {type(exc).__name__}: {exc}"
        with self._lock:
            self.consecutive_failures += 1
            self.last_error = text
            self.last_error_time = time.time()
            failures = self.consecutive_failures
        self._disconnect("restart")
        limit = self.policy.max_restarts
        if limit is not None and failures > limit:
            log.error(
                "%s: giving up after %d consecutive failures; last: %s", self.id, failures, text
            )
            self._set_state(InstrumentState.FAILED)
            return
        delay = self.policy.delay(failures)
        self._retry_at = time.monotonic() + delay
        log.warning("%s: %s; restarting in %.2f s", self.id, text, delay)
        with self._lock:
            self.state = InstrumentState.RESTARTING
        self.runtime._notify(self.id, self.health())

    def _disconnect(self, why: str) -> None:
        # Also called after a failed connect(): drivers must tolerate a half-open link.
        self._begin(f"disconnect ({why})")
        try:
            self.instrument.disconnect()
        except Exception as exc:
            log.warning(
                "%s: disconnect during %s raised %s: %s", self.id, why, type(exc).__name__, exc
            )
        finally:
            self._end()
            self.connected = False

    def _execute(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return  # the caller gave up while it was queued: never send it late
        if not self.connected:
            with self._lock:
                state, err = self.state, self.last_error
            job.future.set_result(
                CommandResult.failure(
                    LegacyInstrumentError(
                        f"cannot {job.command}: instrument is {state} (last error: {err})",
                        instrument=self.id,
                        fix="check its connection; the runtime reconnects it automatically"
                        if state is InstrumentState.RESTARTING
                        else "check its connection, then call runtime.retry(instrument_id).",
                    )
                )
            )
            return
        self._begin(str(job.command))
        try:
            result = self.instrument.handle(job.command)
            if not isinstance(result, CommandResult):
                result = CommandResult.failure(
                    LegacyInstrumentError(
                        f"driver bug: handle({job.command}) returned {type(result).__name__}",
                        instrument=self.id,
                        fix="make handle() return a CommandResult.",
                    )
                )
        except DaqbridgeError as exc:
            result = CommandResult.failure(exc)
        except Exception as exc:
            result = CommandResult.failure(
                LegacyInstrumentError(
                    f"driver raised {type(exc).__name__} on {job.command}: {exc}",
                    instrument=self.id,
                    fix="report this driver bug; handle() should return CommandResult.failure.",
                )
            )
        finally:
            self._end()
        job.future.set_result(result)

    def _fail_pending(self, why: str) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_result(
                    CommandResult.failure(
                        LegacyInstrumentError(
                            f"{item.command} not sent: {why}",
                            instrument=self.id,
                            fix="start a runtime before sending commands.",
                        )
                    )
                )

    def describe_hang(self) -> str:
        h = self.health()
        if h["activity"]:
            return f"hung in {h['activity']} for {h['busy_for']:.1f} s"
        return f"did not finish ({h['state']})"


class LegacyRuntime:
    """Owner of the legacy instruments: one worker thread each, one distributor for all."""

    def __init__(
        self,
        *,
        distributor: DataDistributor | None = None,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self._distributor = distributor or DataDistributor()
        self.restart_policy = restart_policy or RestartPolicy()
        self._workers: dict[str, _Worker] = {}
        self._instruments: dict[str, LegacyInstrument] = {}
        self._listeners: list[HealthListener] = []
        self._lock = threading.Lock()
        self._state = "new"
        self._warned_loop = False
        self.last_stop_report: StopReport | None = None
        self.stop_timeout = 5.0
        """Default deadline of ``stop()`` (``[runtime] stop_timeout_s`` when built from config)."""

    # --- building -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: LegacyConfig,
        ports: Any = None,
        *,
        distributor: DataDistributor | None = None,
        restart_policy: RestartPolicy | None = None,
    ) -> LegacyRuntime:
        """Build every instrument of ``config`` with its registered driver; nothing is opened
        until ``start()``. ``ports`` is handed to the drivers (a ``SerialPortPool``)."""
        from daqbridge.legacy._config import build_instrument

        runtime = cls(
            distributor=distributor, restart_policy=restart_policy or config.restart_policy()
        )
        runtime.stop_timeout = config.runtime.stop_timeout_s
        for entry in config.instruments.values():
            runtime.add(build_instrument(entry, ports), entry.polling_rate_hz)
        return runtime

    def add(self, instrument: LegacyInstrument, polling_rate_hz: float = 1.0) -> None:
        """Run ``instrument``, polled ``polling_rate_hz`` times a second (0: commands only)."""
        if not isinstance(instrument, LegacyInstrument):
            raise TypeError(f"add() takes a LegacyInstrument, got {type(instrument).__name__}")
        try:
            rate = float(polling_rate_hz)
        except (TypeError, ValueError):
            rate = math.nan
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(
                f"polling_rate_hz must be a finite number >= 0, got {polling_rate_hz!r}",
                key=f"instruments.{instrument.instrument_id}.polling_rate_hz",
                fix="give a rate in Hz, or 0 for an instrument that is only commanded.",
            )
        with self._lock:
            if self._state == "stopped":
                raise RuntimeError("this LegacyRuntime was stopped; build a new one")
            if instrument.instrument_id in self._workers:
                raise ConfigError(
                    f"two legacy instruments are named {instrument.instrument_id!r}",
                    key=f"instruments.{instrument.instrument_id}",
                    fix="give every instrument a unique name.",
                )
            worker = _Worker(self, instrument, rate, self.restart_policy)
            self._workers[instrument.instrument_id] = worker
            self._instruments[instrument.instrument_id] = instrument
            instrument.bind_publisher(worker.publish)
            running = self._state == "running"
        if running:
            worker.start()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker: connect, then poll. Returns at once (connecting happens on the
        workers; watch ``health()`` or a listener to know when they run)."""
        with self._lock:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise RuntimeError("this LegacyRuntime was stopped; build a new one")
            self._state = "running"
            workers = list(self._workers.values())
        for w in workers:
            w.start()

    def wait_running(self, timeout: float = 5.0) -> bool:
        """Block until every instrument is running (or failed/restarting past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w.state is InstrumentState.RUNNING for w in self._workers.values()):
                return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float | None = None) -> bool:
        """Ordered shutdown within ``timeout`` seconds (default ``stop_timeout``): stop polling
        everywhere (interrupting running commands with the drivers' ``stop()``), then disconnect
        every instrument.

        Never hangs on a hung instrument: returns by the deadline with False, and
        ``last_stop_report.stragglers`` names each instrument that did not finish and where it hung.
        """
        if timeout is None:
            timeout = self.stop_timeout
        t0 = time.monotonic()
        deadline = t0 + max(0.0, timeout)
        with self._lock:
            previous, self._state = self._state, "stopped"
            workers = list(self._workers.values())
        if previous != "running":
            for w in workers:
                w._set_state(InstrumentState.STOPPED)
                w._fail_pending("the legacy runtime is not running")
            self.last_stop_report = StopReport(True, {}, 0.0)
            return True
        # Phase 1: stop polling. A worker busy in a command gets its driver's stop() so a long
        # move ends now rather than at its natural end.
        for w in workers:
            w.stop_polling.set()
            w.inbox.put(_WAKE)
            if w.activity is not None and w.activity != "poll":
                self._call_stop(w)
        phase1_deadline = t0 + max(0.0, timeout) * 0.5
        for w in workers:
            w.parked.wait(max(0.0, phase1_deadline - time.monotonic()))
        # Phase 2: disconnect. Stragglers of phase 1 are released too: they disconnect if they
        # ever come back, but nobody waits beyond the deadline.
        for w in workers:
            w.may_disconnect.set()
        for w in workers:
            w.done.wait(max(0.0, deadline - time.monotonic()))
        stragglers: dict[str, str] = {}
        for w in workers:
            if not w.done.is_set():
                stragglers[w.id] = w.describe_hang()
        report = StopReport(not stragglers, stragglers, time.monotonic() - t0)
        self.last_stop_report = report
        if stragglers:
            log.error(
                "legacy runtime stopped with stragglers after %.2f s: %s",
                report.duration,
                "; ".join(f"{k}: {v}" for k, v in stragglers.items()),
            )
        return report.clean

    def remove(self, instrument_id: str, timeout: float = 5.0) -> bool:
        """Stop and disconnect one instrument, then forget it. False if it did not finish."""
        with self._lock:
            worker = self._workers.pop(instrument_id, None)
            self._instruments.pop(instrument_id, None)
        if worker is None:
            raise KeyError(self._unknown(instrument_id))
        worker.instrument.bind_publisher(None)
        if not worker.thread.is_alive() and not worker.done.is_set():
            worker._set_state(InstrumentState.STOPPED)
            return True
        worker.stop_polling.set()
        worker.may_disconnect.set()
        worker.inbox.put(_WAKE)
        return worker.done.wait(timeout)

    def retry(self, instrument_id: str) -> None:
        """Reconnect a failed (or back-off waiting) instrument now, with a fresh back-off."""
        self._worker(instrument_id).inbox.put(_RESET)

    # --- commands -------------------------------------------------------------------------

    def submit_future(
        self, instrument_id: str, command: Command
    ) -> concurrent.futures.Future[CommandResult]:
        """Queue ``command`` for the instrument's worker; the future resolves to its result."""
        if not isinstance(command, Command):
            raise TypeError(f"submit takes a Command, got {type(command).__name__}")
        job = _Job(command)
        with self._lock:
            worker = self._workers.get(instrument_id)
            state = self._state
        if worker is None:
            job.future.set_result(
                CommandResult.failure(LegacyInstrumentError(self._unknown(instrument_id)))
            )
        elif state != "running" or worker.stop_polling.is_set():
            job.future.set_result(
                CommandResult.failure(
                    LegacyInstrumentError(
                        f"cannot {command}: the legacy runtime is {state}",
                        instrument=instrument_id,
                        fix="call LegacyRuntime.start() first"
                        if state == "new"
                        else "build and start a new runtime.",
                    )
                )
            )
        else:
            worker.inbox.put(job)
        return job.future

    def submit(self, instrument_id: str, command: Command, timeout: float = 10.0) -> CommandResult:
        """Run ``command`` on the instrument's worker and wait up to ``timeout`` seconds.

        Thread-safe. Never raises for instrument problems: a refusal, a timeout or an unknown
        instrument come back as ``ok=False`` (see ``CommandResult``). From async code use
        ``submit_async``: this call blocks its caller.
        """
        self._warn_if_on_loop()
        fut = self.submit_future(instrument_id, command)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            return self._timed_out(instrument_id, command, fut, timeout)

    async def submit_async(
        self, instrument_id: str, command: Command, timeout: float = 10.0
    ) -> CommandResult:
        """``submit`` for coroutines: the command runs on the worker, the loop keeps running."""
        fut = self.submit_future(instrument_id, command)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except TimeoutError:
            return self._timed_out(instrument_id, command, fut, timeout)

    def halt(self, instrument_id: str, timeout: float = 2.0) -> CommandResult:
        """Call the driver's ``stop()`` now, from outside its worker (which may be busy in a
        move); reports a driver whose stop() itself hangs instead of hanging the caller."""
        worker = self._worker(instrument_id)
        done = self._call_stop(worker)
        if not done.wait(timeout):
            return CommandResult.failure(
                InstrumentTimeout(
                    f"stop() did not return within {timeout} s",
                    instrument=instrument_id,
                    fix="the instrument may be unresponsive: check it, power-cycle if needed.",
                )
            )
        outcome = getattr(done, "outcome", None)
        if isinstance(outcome, BaseException):
            err = (
                outcome
                if isinstance(outcome, DaqbridgeError)
                else LegacyInstrumentError(
                    f"stop() raised {type(outcome).__name__}: {outcome}",
                    instrument=instrument_id,
                    fix="check the instrument and its driver.",
                )
            )
            return CommandResult.failure(err)
        return CommandResult.success(bool(outcome))

    def _call_stop(self, worker: _Worker) -> threading.Event:
        done = threading.Event()

        def run() -> None:
            try:
                done.outcome = worker.instrument.stop()  # type: ignore[attr-defined]
            except BaseException as exc:
                done.outcome = exc  # type: ignore[attr-defined]
                log.warning("%s: stop() raised %s", worker.id, exc)
            finally:
                done.set()

        threading.Thread(target=run, name=f"legacy-stop-{worker.id}", daemon=True).start()
        return done

    # --- introspection --------------------------------------------------------------------

    @property
    def distributor(self) -> DataDistributor:
        return self._distributor

    @property
    def instruments(self) -> Mapping[str, LegacyInstrument]:
        return MappingProxyType(self._instruments)

    @property
    def running(self) -> bool:
        return self._state == "running"

    def health(self) -> dict[str, dict[str, Any]]:
        """Per instrument: state, restarts, last_error, last_measurement_time, polls, activity."""
        return {k: w.health() for k, w in list(self._workers.items())}

    def add_listener(self, listener: HealthListener) -> None:
        """``listener(instrument_id, health)`` on every state change and restart. Called from
        worker threads: keep it short; exceptions are logged and ignored."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: HealthListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, instrument_id: str, health: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(instrument_id, health)
            except Exception:
                log.exception("health listener %r raised", listener)

    def _worker(self, instrument_id: str) -> _Worker:
        worker = self._workers.get(instrument_id)
        if worker is None:
            raise KeyError(self._unknown(instrument_id))
        return worker

    def _unknown(self, instrument_id: str) -> str:
        known = sorted(self._workers) or "none"
        return f"no legacy instrument named {instrument_id!r}; known: {known}"

    def _timed_out(
        self,
        instrument_id: str,
        command: Command,
        fut: concurrent.futures.Future[CommandResult],
        timeout: float,
    ) -> CommandResult:
        if fut.cancel():
            what = f"{command} was still queued after {timeout} s and was withdrawn (never sent)"
        else:
            worker = self._workers.get(instrument_id)
            hang = worker.describe_hang() if worker else "unknown"
            what = f"{command} did not finish within {timeout} s (instrument {hang})"
        return CommandResult.failure(
            InstrumentTimeout(
                what,
                instrument=instrument_id,
                fix="check the instrument responds; give long actions a longer timeout.",
            )
        )

    def _warn_if_on_loop(self) -> None:
        if self._warned_loop:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._warned_loop = True
        log.warning(
            "LegacyRuntime.submit() called on a running event loop: it blocks the loop until the "
            "instrument answers; use `await runtime.submit_async(...)` instead."
        )

    def __enter__(self) -> LegacyRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
