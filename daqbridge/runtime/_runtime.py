"""The coexistence runtime: the object a scientist starts in the morning.

    with Runtime.from_profile("my_lab.toml") as rt:     # or None: the simulated lab
        rt.RE(bp.scan([rt["sim_meter"]], rt["sim_stage_x"], -5, 5, 11))
        print(rt.format_status())
    # leaving the block shuts everything down in order, each phase within its deadline

Why it is built this way:

* Start-up goes bottom up and is checked before anything is touched: the profile (ConfigError
  before any port opens), every native driver module and legacy driver type (also before any
  port opens), then resources, simulators, the RunEngine (first, because ophyd-async devices
  must be connected on its loop), the legacy drivers, the native devices with their identity
  checks, the adapters, and the catalog. A failure undoes what was done, in shutdown order.
* One failed instrument aborts the start-up by default: a lab that silently starts without its
  power meter produces a night of scans with no power data. ``allow_partial=True`` starts
  without it and lists it in ``status()["failures"]``.
* The catalog (about 3 s to create, less to open) is opened on a helper thread while the
  instruments connect, so start-up costs the longer of the two, not their sum.
* Ctrl-C has two meanings. In IPython (``sigint="pause"``, the default) bluesky's own handler
  pauses the run and the scientist chooses ``RE.resume()`` or ``RE.abort()``. In the command-line
  tools (``sigint="abort"``) there is nobody to ask: Ctrl-C aborts the run (devices stopped, run
  closed as ``abort``, data kept) and the runtime then shuts down in order. See docs/runtime.md.
* Python runs signal handlers on the main thread only, and the kernel may hand SIGINT/SIGTERM to
  any thread. bluesky's main thread waits for the plan on an event with no timeout, so a signal
  that landed on another thread was handled when the plan ended (a scan measured thousands more
  points). The RunEngine here waits in short slices (``RUN_WAIT_SLICE``), so the main thread
  reaches the handler within a fraction of a second, whichever thread received the signal.
* An instrument's failure reaches bluesky as ``FailedStatus(status) from error``, which reads
  as the status repr, not as the words naming the instrument, its port and the fix. A
  preprocessor of the RunEngine gives that FailedStatus the error's text, so the stop
  document's ``reason`` and what ``RE(...)`` raises (still a FailedStatus) carry them.
* bluesky logs every aborted run with a traceback of its own control-flow exception; the runtime
  says in one line which run ended how (``daqbridge.runtime``) and drops those tracebacks.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import signal
import sys
import threading
import time
import weakref
from collections.abc import Generator, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from daqbridge.config import (
    InstrumentBase,
    PathExists,
    Profile,
    SerialInstrument,
    load_profile,
    run_provenance,
)
from daqbridge.errors import (
    CatalogError,
    ConfigError,
    DaqbridgeError,
    InstrumentError,
    InstrumentTimeout,
    ShutdownError,
    daqbridge_cause,
)
from daqbridge.runtime._builders import (
    BuildContext,
    NativeInstrument,
    StartupFailed,
    build_legacy,
    build_native,
    camera_frames_dir,
    check_native_driver,
    connect_native,
    connect_on_loop,
    construct,
    legacy_adapter_class,
    legacy_adapter_options,
    legacy_id,
    legacy_limits,
    legacy_type,
)
from daqbridge.runtime._shutdown import (
    PHASES,
    PhaseForced,
    ShutdownReport,
    ShutdownRequested,
    SignalHandlers,
    Skipped,
    run_phase,
)
from daqbridge.runtime._status import collect_status, format_status

if TYPE_CHECKING:
    from bluesky import RunEngine
    from bluesky.preprocessors import SupplementalData

    from daqbridge.catalog import Catalog
    from daqbridge.legacy import LegacyRuntime
    from daqbridge.runtime._simulation import Simulation
    from daqbridge.transport import DeviceCache, SerialPortPool, VisaSessionManager

log = logging.getLogger("daqbridge.runtime")
run_log = logging.getLogger("daqbridge.runtime.runs")
"""One line per run that ended otherwise than ``success`` (a front end that reports the end of
its own run itself, like ``daqbridge run``, filters this logger)."""

LEGACY_CONNECT_TIMEOUT = 15.0
"""Seconds the legacy drivers get to connect at start-up when no ``connect_timeout`` is given."""

CATALOG_OPEN_TIMEOUT = 120.0
"""Seconds the catalog may take to open (creating one takes about 3 s; a server may be slow)."""

RUN_WAIT_SLICE = 0.1
"""Seconds the main thread waits for a running plan at a time. A signal the kernel delivered to
another thread is handled (on the main thread) at the end of the current slice at the latest."""

SigintMode = Literal["pause", "abort"]

_LIVE: set[Runtime] = set()
"""Running runtimes: closed at interpreter exit even if nobody holds a reference any more."""
_LIVE_LOCK = threading.Lock()


def _close_at_exit(ref: weakref.ref[Runtime]) -> None:
    runtime = ref()
    if runtime is not None:
        runtime._close_at_exit()


def _register_exit_hook(runtime: Runtime) -> None:
    """Close ``runtime`` when the interpreter exits, before thread pools and Tiled stop.

    By the time ``atexit`` handlers run, concurrent.futures refuses new work (a device's worker
    could no longer send the stop command to a moving stage) and the in-process Tiled server has
    been shut down by its own hook (the last documents could not be written). ``threading``'s
    exit hooks run before both, newest first; this one is registered once the runtime has used
    a thread pool and opened its catalog, so it runs before theirs. ``atexit`` is the fallback
    where that hook does not exist.
    """
    hook = functools.partial(_close_at_exit, weakref.ref(runtime))
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading exit hooks")
        register(hook)
    except RuntimeError:
        atexit.register(hook)


@functools.cache
def _sliced_wait_class() -> type:
    """bluesky's DuringTask, waiting for the plan in slices (built on first use: bluesky is
    imported only when a runtime starts)."""
    from bluesky.utils import DefaultDuringTask

    class SlicedWait(DefaultDuringTask):
        """Wait for the plan ``RUN_WAIT_SLICE`` at a time, so pending signals get handled.

        bluesky's own wait (``Event.wait()`` with no timeout) wakes for a signal only if the
        kernel delivered it to the main thread; one delivered to any other thread waited for the
        end of the plan. The Qt branch of bluesky's wait already wakes on every signal (through
        ``signal.set_wakeup_fd``) and runs the plots' event loop: it is kept.
        """

        def block(self, blocking_event: threading.Event) -> None:
            if "matplotlib" in sys.modules:
                import matplotlib

                if "qt" in matplotlib.get_backend().lower():
                    super().block(blocking_event)
                    return
            while not blocking_event.wait(RUN_WAIT_SLICE):
                pass

    return SlicedWait


class _QuietAborts(logging.Filter):
    """Drops what bluesky logs about an aborted run of a runtime's RunEngine.

    bluesky logs ``Run aborted`` with the traceback of its own RequestAbort (60 lines through
    the plan's wrappers) for every abort, and "No open traces left to close!" after it. The
    runtime reports the run's end in one line (``Runtime._report_run_end``), and the exception
    the caller gets says the rest. A run that failed on an instrument is reported the same way
    (the DaqbridgeError raised says what to do); any other failure keeps bluesky's traceback,
    which is then the only clue to a bug in a plan.
    """

    def __init__(self) -> None:
        super().__init__("daqbridge-quiet-aborts")
        self.engines: weakref.WeakSet[Any] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "No open traces left to close!":
            return False
        engine = getattr(record, "RE", None)
        if engine is None or engine not in self.engines or not record.exc_info:
            return True
        from bluesky.utils import FailedPause, PlanHalt, RequestAbort, RequestStop

        error = record.exc_info[1]
        stopped = (RequestAbort, RequestStop, PlanHalt, FailedPause, asyncio.CancelledError)
        return not (isinstance(error, stopped) or daqbridge_cause(error) is not None)


_QUIET_ABORTS = _QuietAborts()


class _LateStatusOfAnAbortedWait(logging.Filter):
    """Drops asyncio's traceback for a status that finishes after an abort cancelled its wait.

    bluesky 1.16.0's ``RunEngine._status_object_completed`` sets the result of the wait's
    future without asking whether it is still pending; after an abort (Ctrl-C, SIGTERM, a
    failed instrument) the RunEngine has cancelled it, so a move or trigger that ends
    afterwards raises ``InvalidStateError`` inside an event-loop callback, and asyncio logs it
    with a traceback. Nothing is wrong then (the run was aborted, its data kept), and a
    scientist must not be shown a traceback for stopping a run. Any other error of a callback
    keeps its traceback.
    """

    def __init__(self) -> None:
        super().__init__("daqbridge-late-status")

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(error, asyncio.InvalidStateError)
            and "RunEngine._status_object_completed" in record.getMessage()
        )


_LATE_STATUS = _LateStatusOfAnAbortedWait()


RUN_METADATA_FILE = "runengine-metadata.json"
"""In the data directory: ``RE.md`` as the scientist left it, ``scan_id`` above all."""


class RunMetadata(MutableMapping[str, Any]):
    """``RE.md`` that persists per data directory, the way bluesky's ``PersistentDict`` does:
    ``scan_id`` and every key a scientist sets (``RE.md["proposal"] = ...``) survive the
    process, so the next ``daqbridge run`` or IPython session goes on counting.

    Not ``PersistentDict`` itself: it needs zict, and each process keeps its own copy of
    ``scan_id``, so an IPython session and a ``daqbridge run`` beside it would hand out the
    same number. Here the next scan id is taken from the file under an exclusive lock.
    ``session`` keys (lab, profile, instruments, the command that started the lab) are this
    process's and are never written: a key ``daqbridge run`` set must not appear in the runs
    of the next IPython session.
    """

    def __init__(self, path: Path, session: Mapping[str, Any]) -> None:
        self.path = path
        self._session = dict(session)
        self._kept: dict[str, Any] = {
            k: v for k, v in self._read().items() if k not in self._session
        }

    def _read(self) -> dict[str, Any]:
        import json

        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the run metadata file cannot be read ({exc}).",
                file=str(self.path),
                fix="delete it to start counting scan ids at 1 again, or restore it from a backup.",
            ) from None
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self) -> None:
        import json
        import os

        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._kept, default=_plain_json, indent=1))
        os.replace(tmp, self.path)

    def next_scan_id(self, md: Mapping[str, Any]) -> int:
        """bluesky's ``scan_id_source``: one more than the highest id any process gave out."""
        with self._locked():
            on_disk = self._read().get("scan_id")
            mine = md.get("scan_id")
            ids = [i for i in (on_disk, mine) if isinstance(i, int) and not isinstance(i, bool)]
            scan_id = max(ids, default=0) + 1
            self._kept["scan_id"] = scan_id
            self._write()
        return scan_id

    def __getitem__(self, key: str) -> Any:
        return self._session[key] if key in self._session else self._kept[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._session:
            self._session[key] = value
            return
        with self._locked():
            self._kept[key] = value
            self._write()

    def __delitem__(self, key: str) -> None:
        if key in self._session:
            del self._session[key]
            return
        with self._locked():
            del self._kept[key]
            self._write()

    def __iter__(self) -> Iterator[str]:
        yield from self._session
        yield from (k for k in self._kept if k not in self._session)

    def __len__(self) -> int:
        return len(self._session) + sum(k not in self._session for k in self._kept)

    def __repr__(self) -> str:
        return f"<RunMetadata {self.path} {dict(self)!r}>"


def _plain_json(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


@functools.cache
def _instrument_failed_status_class() -> type:
    """bluesky's FailedStatus whose text is the instrument's error (built on first use)."""
    from bluesky.utils import FailedStatus

    class InstrumentFailedStatus(FailedStatus):
        """A FailedStatus that reads as the DaqbridgeError that failed the status (its cause).

        Still a FailedStatus, so code written against bluesky (a plan that catches one to retry
        a point, a script that expects one from ``RE(...)``) keeps working.
        """

        def __str__(self) -> str:
            return str(self.__cause__)

    InstrumentFailedStatus.__qualname__ = InstrumentFailedStatus.__name__
    return InstrumentFailedStatus


def _in_the_instruments_words(exc: BaseException) -> BaseException:
    """``exc``, or for a FailedStatus caused by a DaqbridgeError, one that reads as that error."""
    from bluesky.utils import FailedStatus

    from daqbridge.devices.core import instrument_error

    reworded = _instrument_failed_status_class()
    if not isinstance(exc, FailedStatus):
        # An ophyd-async read that timed out reaches the plan as TimeoutError(source) from the
        # instrument's error: the plan (and the stop document's reason) gets that error.
        return instrument_error(exc)
    if isinstance(exc, reworded):
        return exc
    cause = daqbridge_cause(exc)
    if cause is None:
        return exc
    status = reworded(*exc.args).with_traceback(exc.__traceback__)
    status.__cause__ = cause
    return status


def _instrument_failures_in_their_words(
    plan: Generator[Any, Any, Any],
) -> Generator[Any, Any, Any]:
    """RunEngine preprocessor: a failed status reads as the instrument's own error.

    bluesky turns a failed status into ``FailedStatus(status) from error`` and throws it into
    the plan; the plan's ``run_wrapper`` closes the run with ``reason=str(exception)``:
    ``DeviceStatus(device=sim_meter, done=True, success=False)``, the instrument, its port and
    the fix one ``__cause__`` down. Here every FailedStatus caused by a DaqbridgeError, thrown
    in or leaving the plan, is replaced by one whose text is that error: the stop document's
    ``reason``, what ``RE(...)`` raises and every front end show the instrument's words.

    The plan is driven by hand rather than with ``yield from``, which would hand what the
    RunEngine throws to the plan before this wrapper could see it.
    """
    reply: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            msg = plan.send(reply) if thrown is None else plan.throw(thrown)
        except StopIteration as done:
            return done.value
        except Exception as exc:
            failure = _in_the_instruments_words(exc)
            if failure is exc:
                raise
            break
        try:
            reply, thrown = (yield msg), None
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - every throw goes on to the plan
            reply, thrown = None, _in_the_instruments_words(exc)
    raise failure


@dataclass
class Resources:
    """The hardware resource managers every stack shares."""

    pool: SerialPortPool
    visa: VisaSessionManager
    device_cache: DeviceCache

    def status(self) -> dict[str, Any]:
        return {"ports": self.pool.status(), "visa": self.visa.status()}


class Runtime:
    """Profile, resources, legacy stack, native devices, RunEngine and catalog, as one object.

    Build it with :meth:`from_profile`. Attributes: ``RE``, ``devices`` (device id -> device,
    native parts such as ``sim_stage_x`` and legacy adapters included), ``catalog``,
    ``resources`` (pool, VISA manager, device cache), ``legacy`` (the LegacyRuntime, None when
    the legacy stack is off), ``profile``, ``simulation`` (None for a real lab), ``failures``
    (instrument id -> error, with ``allow_partial``), ``shutdown_report`` (after close).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        data_dir: str | Path | None = None,
        allow_partial: bool = False,
        best_effort: bool = False,
        plots: bool = False,
        sigint: SigintMode = "pause",
        connect_timeout: float | None = None,
        legacy_types: Mapping[str, str] | None = None,
        md: Mapping[str, Any] | None = None,
    ) -> None:
        if sigint not in ("pause", "abort"):
            raise ConfigError(
                f"sigint must be 'pause' or 'abort', got {sigint!r}.",
                key="sigint",
                fix="'pause' for IPython sessions (Ctrl-C pauses the run), 'abort' for "
                "command-line tools (Ctrl-C aborts the run and shuts down).",
            )
        if connect_timeout is not None and not connect_timeout > 0:
            raise ConfigError(
                f"connect_timeout must be > 0 seconds, got {connect_timeout!r}.",
                key="connect_timeout",
                fix="give seconds, or None for each driver's default.",
            )
        from daqbridge.config import locate_data

        self.profile = profile
        # The one rule of every command (DAQBRIDGE_DATA, then data_dir, then the profile).
        self.data_dir: Path = locate_data(profile, data_dir).directory
        self.allow_partial = allow_partial
        self.best_effort = best_effort
        self.plots = plots
        self.sigint: SigintMode = sigint
        self.connect_timeout = connect_timeout
        self.legacy_types = dict(legacy_types or {})
        self._extra_md = dict(md or {})

        self.RE: RunEngine | None = None
        self.catalog: Catalog | None = None
        self.resources: Resources | None = None
        self.legacy: LegacyRuntime | None = None
        self.simulation: Simulation | None = None
        self.failures: dict[str, DaqbridgeError] = {}
        self.notes: dict[str, list[str]] = {}
        self.state = "new"
        self.closing = False
        self.closed = False
        self.shutdown_report: ShutdownReport | None = None
        self.startup_times: dict[str, float] = {}
        """Seconds each start-up step took (the catalog opens in parallel)."""

        self._devices: dict[str, Any] = {}
        self._native: dict[str, NativeInstrument] = {}
        self._legacy_entries: dict[str, InstrumentBase] = {}
        self._legacy_ids: dict[str, str] = {}
        self._adapters: dict[str, Any] = {}
        self.shadow: Any = None
        """The ShadowRecorder adding legacy twins to every run's events (None: no shadow)."""
        self.sd: SupplementalData | None = None
        """bluesky's SupplementalData on the RunEngine: ``sd.baseline`` is read into every run's
        ``baseline`` stream at its start and end (``[lab] baseline``; docs/profile.md)."""
        self._skipped: set[tuple[str, str]] = set()
        self._subscriptions: dict[str, int] = {}
        self._catalog_future: concurrent.futures.Future | None = None
        self._close_lock = threading.Lock()
        self._signals: SignalHandlers | None = None
        self._shutdown_signal: int | None = None
        self._in_run = False
        """True while :meth:`run` runs a plan: a signal then ends as ShutdownRequested."""
        self._run_signal: int | None = None
        """The signal received during the current :meth:`run`, if any."""

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def from_profile(
        cls,
        path: str | Path | Profile | None = None,
        *,
        data_dir: str | Path | None = None,
        start: bool = True,
        allow_partial: bool = False,
        best_effort: bool = False,
        plots: bool = False,
        sigint: SigintMode = "pause",
        connect_timeout: float | None = None,
        legacy_types: Mapping[str, str] | None = None,
        md: Mapping[str, Any] | None = None,
    ) -> Runtime:
        """Load and check the profile (None: the embedded simulated lab), then start the lab.

        Every profile error is a ConfigError raised before any port is opened. ``data_dir``
        replaces the profile's ``lab.data_dir``; the DAQBRIDGE_DATA environment variable
        overrides both. ``start=False`` returns the runtime unstarted (call :meth:`start`).

        Options: ``allow_partial`` starts without instruments that fail (listed in
        ``failures``); ``best_effort`` subscribes bluesky's BestEffortCallback (``plots`` to let
        it plot); ``sigint`` chooses what Ctrl-C does during a run ('pause' or 'abort', see the
        module docstring); ``connect_timeout`` bounds each instrument's connection (None: the
        drivers' defaults); ``legacy_types`` maps an instrument id or a driver name to another
        registered legacy driver type; ``md`` adds metadata to every run.
        """
        profile = (
            path if isinstance(path, Profile) else load_profile(path, device_cache=PathExists())
        )
        for warning in profile.warnings:
            log.warning("profile %s: %s", profile.label, warning)
        from daqbridge.config import ensure_ready  # the Tiled server, SDKs: see there

        ensure_ready(profile, instruments=not allow_partial)  # before anything starts
        runtime = cls(
            profile,
            data_dir=data_dir,
            allow_partial=allow_partial,
            best_effort=best_effort,
            plots=plots,
            sigint=sigint,
            connect_timeout=connect_timeout,
            legacy_types=legacy_types,
            md=md,
        )
        if start:
            runtime.start()
        return runtime

    def start(self) -> Runtime:
        """Bring the lab up (once). On failure everything already started is shut down again
        in order and the error is raised."""
        if self.state != "new":
            if self.state == "running":
                return self
            raise ShutdownError(
                f"this runtime cannot start: it is {self.state}.",
                fix="build a new one with Runtime.from_profile().",
            )
        self.state = "starting"
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException as exc:
            self.state = "failed"
            log.error("start-up failed: %s", exc)
            self.close(reason=f"start-up failed: {type(exc).__name__}")  # logs its report
            raise
        self.state = "running"
        log.info(
            "runtime for %r started in %.2f s: %d devices, %d legacy instruments%s",
            self.profile.lab.name,
            time.monotonic() - t0,
            len(self._devices),
            len(self._legacy_entries),
            f", {len(self.failures)} FAILED" if self.failures else "",
        )
        return self

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.startup_times[name] = round(time.monotonic() - t0, 4)

    def _start(self) -> None:
        with self._step("preflight"):
            self._preflight()

        from daqbridge.transport import DeviceCache, SerialPortPool, VisaSessionManager

        pool = SerialPortPool()
        visa = VisaSessionManager()
        self.resources = Resources(pool, visa, DeviceCache(pool=pool, visa=visa))

        opener = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daqbridge-catalog")
        self._catalog_future = opener.submit(self._open_catalog)
        opener.shutdown(wait=False)
        with _LIVE_LOCK:
            _LIVE.add(self)

        if self.profile.simulation.enabled:
            from daqbridge.runtime._simulation import Simulation

            with self._step("simulators"):
                self.simulation = Simulation.start(self.profile)

        ctx = BuildContext(self.profile, pool, visa, self.data_dir, self.simulation)
        with self._step("run_engine"):
            self.RE = self._make_run_engine()
            # ophyd-async devices connect, and then live, on the RunEngine's loop.
            ctx.loop = self.RE.loop
        with self._step("legacy"):
            self._start_legacy(ctx)
        with self._step("native"):
            self._start_native(ctx)
        with self._step("legacy_connect"):
            self._wait_legacy()
        with self._step("adapters"):
            self._wrap_legacy(ctx)
        with self._step("baseline"):
            self._choose_baseline()
        with self._step("catalog_wait"):
            try:
                self.catalog = self._catalog_future.result(timeout=CATALOG_OPEN_TIMEOUT)
            except concurrent.futures.TimeoutError:
                raise CatalogError(
                    f"the catalog did not open within {CATALOG_OPEN_TIMEOUT:g} s.",
                    resource=self.profile.lab.catalog_uri or str(self.data_dir),
                    fix="check that the data directory's disk responds and that the Tiled server "
                    "(catalog_uri) is reachable.",
                ) from None
        self._subscribe()
        _register_exit_hook(self)  # after the catalog's own hook: see its docstring
        if self.sigint == "abort" and threading.current_thread() is threading.main_thread():
            # The RunEngine has no SIGINT handler of its own in this mode: ours must be there.
            self.install_signal_handlers()

    def _catalog_location(self) -> tuple[Path, str | None]:
        """(data directory of the catalog, Tiled server URI or None)."""
        uri = self.profile.lab.catalog_uri
        if uri is not None and uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :]).expanduser()
            if db.name != "catalog.db":
                raise ConfigError(
                    f"a SQLite catalog must be a file named catalog.db, got {db.name!r}.",
                    file=self.profile.label,
                    key="lab.catalog_uri",
                    fix="write sqlite:///DIR/catalog.db (its other files are kept in DIR).",
                )
            return db.parent, None
        return self.data_dir, uri

    def _preflight(self) -> None:
        """Everything that can be checked without touching hardware, checked now."""
        self._catalog_location()
        problems: list[tuple[InstrumentBase, str, ConfigError]] = []
        for inst in self.profile.native_instruments():
            try:
                check_native_driver(inst)
            except ConfigError as exc:
                problems.append((inst, "native", exc))
        legacy = self.profile.legacy_instruments()
        if legacy:
            import daqbridge.legacy  # noqa: F401 - registers the built-in legacy driver types
        for inst in legacy:
            try:
                legacy_type(inst, self.legacy_types)
            except ConfigError as exc:
                problems.append((inst, "legacy", exc))
        if not problems:
            return
        if not self.allow_partial:
            if len(problems) == 1:
                raise problems[0][2]
            raise ConfigError(
                "several instruments cannot be built: "
                + " | ".join(str(exc) for _, _, exc in problems),
                file=self.profile.label,
                fix="correct each entry as its message says, or start with allow_partial=True "
                "to run without them.",
            )
        for inst, stack, exc in problems:
            self._skipped.add((inst.id, stack))
            self.failures[inst.id if stack == "native" else legacy_id(inst)] = exc
            log.error("instrument %s skipped (%s stack): %s", inst.id, stack, exc)

    def _open_catalog(self) -> Catalog:
        from daqbridge.catalog import open_catalog

        lab = self.profile.lab
        readable = sorted(
            {
                str(camera_frames_dir(inst, self.data_dir))
                for inst in self.profile.native_instruments()
                if inst.driver == "pvcam"
            }
        )
        directory, uri = self._catalog_location()
        return open_catalog(
            directory,
            uri=uri,
            api_key=lab.resolved_api_key() if uri else None,
            readable_dirs=readable,
            # Runs a crash left in the log go in on the writer's thread: start-up does not wait.
            background_recovery=True,
        )

    def _make_run_engine(self) -> RunEngine:
        from bluesky import RunEngine

        import daqbridge
        from daqbridge.runtime._baseline import LabBaseline

        profile = self.profile
        md: dict[str, Any] = {
            "lab": profile.lab.name,
            "profile": str(profile.source) if profile.source is not None else profile.label,
            "daqbridge_version": daqbridge.__version__,
            "stacks": {"native": profile.stacks.native, "legacy": profile.stacks.legacy},
            "simulated": profile.simulation.enabled,
            "instruments": {i.id: i.stack for i in profile.enabled_instruments()},
        }
        # Which settings and which stack produced a run: a migration compares runs by these.
        md.update(run_provenance(profile))
        md.update(self._extra_md)
        # bluesky fills in "versions" at once: this process's, never carried over.
        run_md = RunMetadata(self.data_dir / RUN_METADATA_FILE, session={**md, "versions": {}})
        options: dict[str, Any] = {
            "during_task": _sliced_wait_class()(),
            "scan_id_source": run_md.next_scan_id,
        }
        if self.sigint == "abort":
            options["context_managers"] = []
        RE = RunEngine(run_md, **options)  # noqa: N806 - bluesky's name
        self.sd = LabBaseline()
        # Inside the rewording below, so a baseline read that fails ends the run in the
        # instrument's words too. The devices are chosen once they are up (_choose_baseline).
        RE.preprocessors.append(self.sd)
        RE.preprocessors.append(_instrument_failures_in_their_words)
        # Not part of _subscriptions: those are the writers and tables status() lists.
        RE.subscribe(self._report_run_end, "stop")
        _QUIET_ABORTS.engines.add(RE)
        bluesky_log = logging.getLogger("bluesky")
        if _QUIET_ABORTS not in bluesky_log.filters:
            bluesky_log.addFilter(_QUIET_ABORTS)
        asyncio_log = logging.getLogger("asyncio")
        if _LATE_STATUS not in asyncio_log.filters:
            asyncio_log.addFilter(_LATE_STATUS)
        return RE

    @staticmethod
    def _report_run_end(name: str, doc: Mapping[str, Any]) -> None:
        """One line per run that did not succeed, instead of bluesky's traceback.

        ``exit_status`` rides on the record, so a front end that shows failures its own way
        (the IPython profile) can keep only the aborts.
        """
        status = doc.get("exit_status")
        if status == "success":
            return
        reason = doc.get("reason") or ""
        extra = {"exit_status": status, "run_uid": doc.get("run_start")}
        if status == "abort":
            run_log.warning(
                "run %s aborted (exit status 'abort'%s); the events taken so far are kept",
                doc.get("run_start"),
                f", reason: {reason}" if reason else "",
                extra=extra,
            )
        else:
            run_log.warning(
                "run %s ended with exit status %r%s; the events taken before are kept",
                doc.get("run_start"),
                status,
                f": {reason}" if reason else "",
                extra=extra,
            )

    def _start_legacy(self, ctx: BuildContext) -> None:
        if not self.profile.stacks.legacy:
            return
        from daqbridge.legacy import LegacyRuntime

        self.legacy = LegacyRuntime(restart_policy=self.profile.legacy.restart_policy())
        self.legacy.stop_timeout = self.profile.shutdown.legacy
        for inst in self.profile.legacy_instruments():
            if (inst.id, "legacy") in self._skipped:
                continue
            instrument, rate = build_legacy(inst, ctx, overrides=self.legacy_types)
            self.legacy.add(instrument, rate)
            self._legacy_entries[legacy_id(inst)] = inst
        self.legacy.start()

    def _start_native(self, ctx: BuildContext) -> None:
        for inst in self.profile.native_instruments():
            if (inst.id, "native") in self._skipped:
                continue
            built: NativeInstrument | None = None
            try:
                built = build_native(inst, ctx)
                self._native[inst.id] = built  # registered first: close() must close it
                self.notes[inst.id] = built.notes
                connect_native(built, self.connect_timeout)
            except DaqbridgeError as exc:
                if not self.allow_partial:
                    raise
                self.failures[inst.id] = exc
                log.error("instrument %s did not start: %s", inst.id, exc)
                continue
            self._devices.update(built.devices)

    def _wait_legacy(self) -> None:
        """Wait until every legacy driver has connected; a failed connect fails fast."""
        if self.legacy is None or not self._legacy_entries:
            return
        timeout = self.connect_timeout or LEGACY_CONNECT_TIMEOUT
        deadline = time.monotonic() + timeout
        pending = set(self._legacy_entries)
        while pending and time.monotonic() < deadline:
            health = self.legacy.health()
            for lid in list(pending):
                h = health.get(lid, {})
                if h.get("state") == "running":
                    pending.discard(lid)
                elif h.get("consecutive_failures", 0) > 0 or h.get("state") == "failed":
                    pending.discard(lid)
                    self._legacy_failed(lid, InstrumentError(str(h.get("last_error"))))
            if pending:
                time.sleep(0.01)
        for lid in pending:
            self._legacy_failed(
                lid,
                InstrumentTimeout(f"the legacy driver did not connect within {timeout:g} s."),
            )

    def _legacy_failed(self, lid: str, cause: BaseException) -> None:
        inst = self._legacy_entries[lid]
        resource = inst.port if isinstance(inst, SerialInstrument) else inst.hardware
        err = StartupFailed(lid, driver=inst.driver, stack="legacy", resource=resource, cause=cause)
        if not self.allow_partial:
            raise err
        self.failures[lid] = err
        log.error("legacy instrument %s did not start (it keeps retrying): %s", lid, err)

    def _wrap_legacy(self, ctx: BuildContext) -> None:
        adapter = legacy_adapter_class() if self._legacy_entries else None
        for lid, inst in self._legacy_entries.items():
            refs = [ref for ref in inst.devices() if ref.stack == "legacy"]
            for ref in refs:
                self._legacy_ids[ref.id] = lid
            notes = self.notes.setdefault(lid, [])
            if adapter is None:
                notes.append(
                    "no ophyd adapter (daqbridge.bridge.legacy_adapter is not available): the "
                    "legacy instrument runs but plans cannot use it"
                )
                continue
            if lid in self.failures:
                continue
            for ref in refs:
                options = legacy_adapter_options(inst, ref.part, self.legacy_types)
                if options is None:
                    notes.append(f"{ref.id}: no legacy channel for part {ref.part!r}")
                    continue
                device = construct(
                    adapter, self.legacy, lid, name=ref.id, notes=notes, what=ref.id, **options
                )
                # The profile's limits are stricter than the driver's (a lab's optics); plans
                # read them from the device, whichever stack it belongs to.
                for parameter, limits in legacy_limits(inst).items():
                    setattr(device, f"{parameter}_limits", limits)
                try:
                    # an ophyd-async device: connected on the RunEngine's loop, where it lives
                    connect_on_loop(device, ctx)(self.connect_timeout or LEGACY_CONNECT_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - reported like any start-up failure
                    notes.append(f"{ref.id}: legacy instrument not confirmed running: {exc}")
                    log.warning("legacy adapter %s: %s", ref.id, exc)
                self._adapters[ref.id] = device
                self._devices[ref.id] = device
        self._record_shadow_in_runs()

    def _record_shadow_in_runs(self) -> None:
        """Every run's events carry the legacy twin of each shadowed device (docs/shadow.md).

        A lab migrates on the evidence of its own experiments, not of a separate comparison;
        the native devices and their keys stay as they are.
        """
        from daqbridge.bridge._shadow import LEGACY_TWIN, ShadowRecorder

        pairs = {}
        for inst in self.profile.enabled_instruments():
            if inst.stack != "shadow":
                continue
            for ref in inst.devices():
                if ref.stack != "legacy" or not ref.id.endswith(LEGACY_TWIN):
                    continue
                native = self._devices.get(ref.id[: -len(LEGACY_TWIN)])
                twin = self._devices.get(ref.id)
                # A bus (all mounts) has no reading of its own: its mounts are shadowed.
                readable = [callable(getattr(d, "read", None)) for d in (native, twin)]
                if all(readable):
                    pairs[native] = twin
        if pairs and self.RE is not None:
            self.shadow = ShadowRecorder(pairs)
            self.RE.preprocessors.append(self.shadow)

    def _choose_baseline(self) -> None:
        """Fill ``sd.baseline`` from ``[lab] baseline`` (unset: every instrument)."""
        from daqbridge.runtime._baseline import BaselineReading, default_baseline, resolve

        profile = self.profile
        owner: dict[str, InstrumentBase] = {}
        twins: list[str] = []
        for inst in profile.enabled_instruments():
            for ref in inst.devices():
                owner[ref.id] = inst
                if inst.stack == "shadow" and ref.stack == "legacy":
                    twins.append(ref.id)
        names = profile.lab.baseline
        if names is None:
            names = default_baseline(self._devices, twins)
        chosen: list[BaselineReading] = []
        whole = {name for name in names if "." not in name}
        for name in dict.fromkeys(names):
            root = name.split(".", 1)[0]
            if root not in self._devices and self.allow_partial:
                log.warning("baseline: %s is left out: its instrument did not start", name)
                continue
            if name != root and root in whole:
                continue  # the whole device is read already; a component again would collide
            device = resolve(name, self._devices, profile=profile.label)
            inst = owner.get(root)
            built = self._native.get(inst.id) if inst is not None else None
            resource = built.resource if built is not None and root in built.devices else None
            if resource is None and inst is not None:
                resource = inst.hardware
            chosen.append(
                BaselineReading(
                    device, instrument=inst.id if inst is not None else root, resource=resource
                )
            )
        assert self.sd is not None
        self.sd.baseline = chosen

    def _subscribe(self) -> None:
        RE = self.RE
        assert RE is not None and self.catalog is not None
        self._subscriptions["catalog"] = RE.subscribe(self.catalog.writer)
        if self.best_effort:
            from bluesky.callbacks.best_effort import BestEffortCallback

            bec = BestEffortCallback()
            if not self.plots:
                bec.disable_plots()
            self._subscriptions["best_effort"] = RE.subscribe(bec)
        from daqbridge.runtime._plots import PLOTS_DIR, RunPlots

        # Each run's PNG (headless) and a 1-D scan's peak statistics, for every front end;
        # held here: the RunEngine keeps only a weak reference to it.
        self.run_plots = RunPlots(self.data_dir / PLOTS_DIR)
        self.run_plots.subscribe(RE)

    # --- using it ---------------------------------------------------------------------------

    @property
    def devices(self) -> Mapping[str, Any]:
        """Device id -> device (read-only)."""
        return MappingProxyType(self._devices)

    def __getitem__(self, device_id: str) -> Any:
        try:
            return self._devices[device_id]
        except KeyError:
            raise KeyError(
                f"no device {device_id!r}; devices: {', '.join(sorted(self._devices)) or 'none'}"
                + (f"; failed: {', '.join(sorted(self.failures))}" if self.failures else "")
            ) from None

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def plan_running(self) -> bool:
        """True while the RunEngine is not idle (running, paused, aborting ...)."""
        return self.RE is not None and str(self.RE.state) != "idle"

    @property
    def shutdown_requested(self) -> int | None:
        """The signal number that asked for shutdown, or None."""
        return self._shutdown_signal

    def run(self, plan: Any, *args: Any, **kwargs: Any) -> Any:
        """``RE(plan)``, for tools: a signal during the run becomes :class:`ShutdownRequested`
        (a KeyboardInterrupt) once the RunEngine has closed the run as aborted.

        Whatever the RunEngine raises after a signal asked it to stop (a device's status failed
        by the abort's own ``stop()``) ends as ShutdownRequested too, with that error in
        ``error``: the user asked to stop, and the run is closed as ``abort``. Its
        ``exit_statuses`` are the stop documents' own, so a caller never says "aborted" about a
        run the catalog holds as ``success``. A runtime that a signal already asked to shut
        down runs nothing more.
        """
        RE = self.RE  # noqa: N806 - bluesky's name
        if RE is None or self.closed or self.closing:
            raise ShutdownError(
                f"the runtime is {self.state}; it cannot run plans.",
                fix="build a new one with Runtime.from_profile().",
            )
        if self._shutdown_signal is not None:
            raise ShutdownRequested(self._shutdown_signal)
        from bluesky.utils import RunEngineInterrupted

        ended: dict[str, str | None] = {}

        def opened(name: str, doc: Mapping[str, Any]) -> None:
            ended[doc["uid"]] = None

        def closed(name: str, doc: Mapping[str, Any]) -> None:
            ended[doc["run_start"]] = doc.get("exit_status")

        tokens = (RE.subscribe(opened, "start"), RE.subscribe(closed, "stop"))
        self._run_signal = None
        self._in_run = True
        error: Exception | None = None
        try:
            try:
                result = RE(plan, *args, **kwargs)
            finally:
                # From here on a signal is one "at idle" (SignalHandlers): the run is over.
                self._in_run = False
                for token in tokens:
                    RE.unsubscribe(token)
        except Exception as exc:  # noqa: BLE001 - re-raised unless a signal asked to stop
            if self._run_signal is None:
                raise
            error = exc
        if self._run_signal is None:
            return result
        interrupted = error is None or isinstance(error, RunEngineInterrupted)
        raise ShutdownRequested(
            self._run_signal, ended, error=None if interrupted else error
        ) from (None if interrupted else error)

    def _abort_signalled_plan(self, *, reason: str, deadline: float) -> Any:
        """Abort the plan a signal interrupted, also one :meth:`run` has not started yet.

        Between ``run()`` being called and the RunEngine leaving idle there is nothing to abort
        yet; wait for it (as long as ``run()`` lasts, at most ``deadline``) instead of letting the
        plan start and run to its end.
        """
        limit = time.monotonic() + deadline
        while self._in_run and not self.plan_running():
            if time.monotonic() > limit:
                break
            time.sleep(0.005)
        return self._abort_plan(reason=reason, deadline=deadline)

    def install_signal_handlers(self, signals: Iterable[int] | None = None) -> SignalHandlers:
        """Abort-then-shutdown signal handlers (main thread only; idempotent).

        Default signals: SIGINT and SIGTERM with ``sigint="abort"``; only SIGTERM with
        ``sigint="pause"``, so Ctrl-C keeps its IPython meaning (pause a run, interrupt the
        prompt). See :class:`SignalHandlers` for what each signal does when.
        """
        if signals is None:
            signals = (
                (signal.SIGINT, signal.SIGTERM) if self.sigint == "abort" else (signal.SIGTERM,)
            )
        if self._signals is None:
            self._signals = SignalHandlers(self, signals)
        self._signals.install()
        return self._signals

    def uninstall_signal_handlers(self) -> None:
        if self._signals is not None:
            self._signals.uninstall()

    def status(self) -> dict[str, Any]:
        """Ports and their holders, stack health, dropped measurements, catalog, simulators."""
        return collect_status(self)

    def format_status(self) -> str:
        return format_status(self.status())

    def __repr__(self) -> str:
        return (
            f"<Runtime {self.profile.lab.name!r} {self.state}: {len(self._devices)} devices"
            + (f", {len(self.failures)} failed" if self.failures else "")
            + ">"
        )

    def __enter__(self) -> Runtime:
        if self.state == "new":
            self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        reason = "exit" if exc_type is None else f"exit on {exc_type.__name__}"
        self.close(reason=reason)

    # --- shutdown ---------------------------------------------------------------------------

    def _stop_run_engine_loop(self, timeout: float = 2.0) -> None:
        """Stop the RunEngine's own event-loop thread and close its loop.

        bluesky starts a ``bluesky-run-engine`` thread per RunEngine and never stops it: without
        this, every runtime start/stop cycle (tests, the IPython %reset, a queue-server worker
        reopening its environment) would leave one thread and three file descriptors behind.
        """
        RE = self.RE
        loop = getattr(RE, "loop", None) if RE is not None else None
        if loop is None or loop.is_closed() or RE.state != "idle":
            return
        thread = getattr(RE, "_th", None)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the RunEngine's event loop did not stop within %.1f s", timeout)
                return
        with contextlib.suppress(RuntimeError):
            loop.close()

    def close(self, reason: str = "close") -> ShutdownReport:
        """Ordered shutdown, each phase within its ``[shutdown]`` deadline; safe to call twice.

        A phase that overruns is abandoned and reported as forced; the next phase still runs.
        The report is logged and returned (``report.raise_for_problems()`` to turn it into an
        exception).
        """
        with self._close_lock:
            if self.shutdown_report is not None:
                return self.shutdown_report
            self.closing = True
            previous_state = self.state
            self.state = "closing"
            deadlines = dict(self.profile.shutdown.phases())
            actions = {
                "run_engine": lambda: self._abort_plan(
                    reason=f"shutdown ({reason})", deadline=deadlines["run_engine"]
                ),
                "native": self._stop_native,
                "legacy": lambda: self._stop_legacy(deadlines["legacy"]),
                "catalog": lambda: self._close_catalog(deadlines["catalog"]),
                "resources": lambda: self._close_resources(deadlines["resources"]),
                "simulators": self._stop_simulators,
            }
            report = ShutdownReport(reason, time.time())
            t0 = time.monotonic()
            for phase in PHASES:
                report.phases.append(run_phase(phase, actions[phase], deadlines[phase]))
            report.duration = time.monotonic() - t0
            self._stop_run_engine_loop()
            self.shutdown_report = report
            self.closed = True
            self.closing = False
            self.state = "closed" if previous_state != "failed" else "failed"
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if self._signals is not None:
                self._signals.uninstall()
            (log.info if report.clean else log.error)("%s", report.format())
            return report

    def _close_at_exit(self) -> None:
        try:
            self.close(reason="interpreter exit")
        except Exception:  # noqa: BLE001 - at exit, report and go
            log.exception("closing the runtime at exit failed")

    def _abort_plan(self, *, reason: str, deadline: float) -> Any:
        """Abort the running or paused plan (run closed as 'abort', data kept); halt if stuck."""
        RE = self.RE
        if RE is None or str(RE.state) == "idle":
            return Skipped("no plan running")
        from bluesky.utils import TransitionError

        # A paused RunEngine finishes its cleanup on the thread that aborts it: without this,
        # bluesky's SigintHandler would try to install itself from a non-main thread.
        RE.context_managers = []
        state = str(RE.state)
        if state not in ("aborting", "halting", "stopping"):
            try:
                RE.abort(reason=reason)
            except TransitionError:
                pass  # it went idle meanwhile
        if self._wait_idle(deadline * 0.7):
            return f"aborted the plan ({state}); run closed as 'abort', data kept"
        log.error("the RunEngine did not abort within %.1f s: halting it", deadline * 0.7)
        try:
            RE.halt()
        except TransitionError:
            pass
        if self._wait_idle(deadline * 0.25):
            return f"plan ({state}) halted after the abort hung"
        raise PhaseForced(f"the RunEngine is still {RE.state} after abort and halt")

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.RE is None or str(self.RE.state) == "idle":
                return True
            time.sleep(0.01)
        return self.RE is None or str(self.RE.state) == "idle"

    def _stop_native(self) -> Any:
        if not self._native:
            return Skipped("no native devices")
        problems: list[str] = []
        built_all = list(self._native.values())[::-1]
        for built in built_all:
            if built.connected:
                try:
                    built.stop()
                except Exception as exc:  # noqa: BLE001 - every device still gets closed
                    problems.append(f"{built.id} stop: {exc}")
        for built in built_all:
            try:
                built.close()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{built.id} close: {exc}")
        if problems:
            raise ShutdownError("; ".join(problems))
        return f"{len(built_all)} instruments stopped and closed"

    def _stop_legacy(self, deadline: float) -> Any:
        for lid, adapter in self._adapters.items():
            close = getattr(adapter, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - the drivers still get stopped
                    log.warning("closing the adapter of %s failed: %s", lid, exc)
        if self.legacy is None:
            return Skipped("legacy stack off")
        # The legacy runtime keeps its own deadline; give it most of ours.
        if self.legacy.stop(timeout=deadline * 0.8):
            return f"{len(self.legacy.instruments)} legacy instruments stopped"
        report = self.legacy.last_stop_report
        stragglers = report.stragglers if report is not None else {}
        raise PhaseForced(
            "legacy drivers did not finish: "
            + "; ".join(f"{k}: {v}" for k, v in stragglers.items())
        )

    def _close_catalog(self, deadline: float) -> Any:
        if self.RE is not None:
            for token in self._subscriptions.values():
                self.RE.unsubscribe(token)
            self._subscriptions.clear()
        catalog = self.catalog
        if catalog is None and self._catalog_future is not None:
            # Start-up failed while the catalog was still opening: close it once it is open.
            try:
                catalog = self._catalog_future.result(timeout=deadline * 0.5)
            except concurrent.futures.TimeoutError:
                raise PhaseForced("the catalog was still opening") from None
            except Exception as exc:  # noqa: BLE001 - it never opened: nothing to close
                return Skipped(f"the catalog never opened ({exc})")
            self.catalog = catalog
        if catalog is None:
            return Skipped("no catalog")
        writer = getattr(catalog, "_writer", None)
        errors_before = list(writer.stats.errors) if writer is not None else []
        catalog.flush(timeout=deadline * 0.6)
        catalog.close(timeout=deadline * 0.3)
        new_errors = [e for e in (writer.stats.errors if writer else []) if e not in errors_before]
        if new_errors:
            # The writer never raises at the RunEngine (the log has the documents); say it here.
            raise ShutdownError(
                f"the catalog writer reported {len(new_errors)} error(s) while flushing, the "
                f"last: {new_errors[-1]}; the runs stay in the write-ahead log and are recovered "
                "on the next start"
            )
        return f"flushed and closed ({catalog.where})"

    def _close_resources(self, deadline: float) -> Any:
        if self.resources is None:
            return Skipped("no resources opened")
        ports = len(self.resources.pool.ports)
        self.resources.pool.close_all(timeout=deadline * 0.5)
        self.resources.visa.close_all()
        self.resources.device_cache.close()
        return f"{ports} serial ports closed"

    def _stop_simulators(self) -> Any:
        if self.simulation is None:
            return Skipped("no simulators")
        count = len(self.simulation.simulators)
        self.simulation.close()
        return f"{count} simulators stopped"
