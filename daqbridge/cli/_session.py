"""The beamline session: the names a scientist types at the prompt, built from a lab profile.

``build_session()`` starts the lab (a :class:`~daqbridge.runtime.Runtime`) and returns the
names to put in a namespace: ``RE``, ``catalog``, ``db``, ``runtime``, ``devices``, every device
by its id, ``bp``/``bps``/``bpp``, the lab's plans and ``bec``. The IPython profile
(profiles/ipython/startup/) and a bluesky-queueserver startup script both call it, so the two
front ends cannot drift apart:

    # queue-server startup script (the queue server collects devices and plans from globals)
    from daqbridge.cli._session import build_session
    globals().update(build_session(progress=False, table=False))

Why it is built this way:

* The profile comes from the argument, else ``$DAQBRIDGE_PROFILE``, else the embedded simulated
  lab, the same rule as ``daqbridge run`` and ``daqbridge status`` (:func:`resolve_profile`).
* Live plot windows only where a display exists: on a headless machine (ssh, CI, a queue
  server) matplotlib is switched to Agg and BestEffortCallback's plots are off, so nothing blocks
  on a window; each run's plot is then a PNG in ``<data_dir>/plots`` instead, and a 1-D scan's
  peak statistics are printed either way (the runtime's ``run_plots``,
  :mod:`daqbridge.runtime._plots`).
* Progress bars on moves (bluesky's ProgressBarManager as ``RE.waiting_hook``) only when
  stderr is a terminal: in a log file they are noise.
* Ctrl-C pauses the run in a session (``sigint="pause"``): the scientist decides between
  ``RE.resume()`` and ``RE.abort()``. The runtime already closes itself in order at interpreter
  exit (atexit).
* Devices carry bluesky's labels (``motors`` for positioners, ``detectors`` for the other
  readables, :func:`label_devices`), so ``%wa motors`` and ``%ct`` find them by label the way
  they do at any bluesky beamline; ``db`` is databroker's v1 view of the same catalog, for the
  scripts and habits that predate Tiled (``db[-1].table()``).
* ``read(device)`` and ``sync(coroutine)`` at the prompt: native devices on ophyd-async read in
  coroutines of the RunEngine's loop (``sim_meter.power.get_value()`` is a coroutine); these
  two run them there and wait, so a scientist needs no ``await`` (docs/getting_started.md).
* A paused, aborted or failed run is one line at the prompt, not bluesky's 40-line traceback of
  its own control flow (:func:`register_quiet_errors`): the runtime logs which run ended how, and
  an instrument's error is shown in the instrument's words. ``%tb`` still shows the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daqbridge.runtime import Runtime

PROFILE_ENV = "DAQBRIDGE_PROFILE"
"""Environment variable naming the lab profile when none is given."""

log = logging.getLogger("daqbridge.session")

# Names every session has; a device id equal to one of them is reachable only via devices[...].
STANDARD_NAMES = frozenset(
    {
        "RE",
        "catalog",
        "db",
        "runtime",
        "devices",
        "bp",
        "bps",
        "bpp",
        "bec",
        "plans",
        "np",
        "read",
        "sync",
    }
)

PROMPT_TIMEOUT = 30.0
"""Seconds :func:`read` and :func:`sync` wait for an instrument before giving up."""


def sync(work: Any, timeout: float = PROMPT_TIMEOUT) -> Any:
    """What a coroutine or status returns, at the prompt: ``sync(sim_meter.power.get_value())``.

    Native devices on ophyd-async (the Newport 1830-C) answer ``get_value()``, ``read()``,
    ``set()`` with coroutines or statuses that belong to the RunEngine's event loop; this runs
    one there and waits (bounded) for its result. A plain value is returned as it is. Not
    inside a plan: there, ``yield from bps.rd(...)``.
    """
    import inspect

    from daqbridge.devices.core import call_sync

    if not inspect.isawaitable(work):
        return work
    return call_sync(work, timeout=timeout)


def read(obj: Any, timeout: float = PROMPT_TIMEOUT) -> dict[str, Any]:
    """``obj.read()`` at the prompt, whichever stack ``obj`` is on: ``read(sim_meter)``,
    ``read(sim_meter.wavelength)``, ``read(sim_stage_x)``. Each call asks the instrument."""
    from daqbridge.devices.core import call_sync, is_async_device

    if is_async_device(obj):
        return call_sync(obj.read, device=obj, timeout=timeout)
    return obj.read()


def resolve_profile(profile: str | os.PathLike[str] | None = None) -> str | None:
    """The profile to load: ``profile``, else ``$DAQBRIDGE_PROFILE``, else None (embedded)."""
    if profile is not None and str(profile) != "":
        return str(profile)
    env = os.environ.get(PROFILE_ENV, "").strip()
    return env or None


def has_display() -> bool:
    """True when matplotlib windows can open: a desktop session on Linux, always elsewhere."""
    # The runtime's rule: it decides by it where no front end says whether to save PNGs.
    from daqbridge.runtime._plots import has_display as runtime_has_display

    return runtime_has_display()


def quiet_tiled() -> None:
    """The in-process Tiled server greets every start on stderr; a session should not."""
    try:
        import tiled.server.app  # noqa: F401 - sets its logger level at import; we override it
    except Exception:  # noqa: BLE001 - a server-less install: nothing to silence
        return
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)


def use_headless_matplotlib() -> None:
    """Switch matplotlib to Agg unless a backend was already chosen by the user."""
    if os.environ.get("MPLBACKEND"):
        return
    import matplotlib

    matplotlib.use("Agg")


def make_best_effort(*, plots: bool, table: bool = True) -> Any:
    """bluesky's BestEffortCallback: tables (unless ``table`` is False), plots if ``plots``."""
    from bluesky.callbacks.best_effort import BestEffortCallback

    if not plots:
        use_headless_matplotlib()
    bec = BestEffortCallback()
    # The baseline stream (every instrument's settings, twice a run) is for the catalog: printed,
    # it buried a count's three lines under a hundred.
    bec.disable_baseline()
    if not plots:
        bec.disable_plots()
    if not table:
        bec.disable_table()
        bec.disable_heading()
    return bec


def install_progress_bars(RE: Any) -> bool:  # noqa: N803 - bluesky's name for it
    """Progress bars for moves, on stderr, when stderr is a terminal. Returns whether it did."""
    if not sys.stderr.isatty():
        return False
    from bluesky.utils import ProgressBarManager

    RE.waiting_hook = ProgressBarManager()
    return True


def build_session(
    profile: str | os.PathLike[str] | None = None,
    *,
    plots: bool | None = None,
    table: bool = True,
    progress: bool | None = None,
    sigint: str = "pause",
    runtime: Runtime | None = None,
    **runtime_options: Any,
) -> dict[str, Any]:
    """Start the lab and return the names of a session, ready for ``namespace.update(...)``.

    ``profile``: a profile file (default: ``$DAQBRIDGE_PROFILE``, else the embedded simulated
    lab). ``plots``: let BestEffortCallback plot (default: when a display exists); without, each
    run's plot is saved as a PNG in ``<data_dir>/plots``. ``table``:
    print its live tables. ``progress``: progress bars on moves (default: when stderr is a
    terminal). ``runtime``: use an already started runtime instead of building one. Other
    keywords go to ``Runtime.from_profile`` (``data_dir``, ``connect_timeout``, ...).
    """
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    import bluesky.preprocessors as bpp
    import numpy as np

    import daqbridge.plans as daq_plans

    quiet_tiled()
    if runtime is None:
        from daqbridge.runtime import Runtime

        runtime = Runtime.from_profile(resolve_profile(profile), sigint=sigint, **runtime_options)
    RE = runtime.RE  # noqa: N806 - the name every bluesky user types
    plots = has_display() if plots is None else plots
    bec = make_best_effort(plots=plots, table=table)
    RE.subscribe(bec)
    run_plots = getattr(runtime, "run_plots", None)
    if run_plots is not None:
        # Where nothing plots live (no display, the queue worker), the PNG is the run's plot.
        run_plots.png = not plots
    if progress is None:
        install_progress_bars(RE)
    elif progress:
        _force_progress(RE)

    names: dict[str, Any] = {
        "RE": RE,
        "catalog": runtime.catalog,
        "runtime": runtime,
        "devices": runtime.devices,
        "bp": bp,
        "bps": bps,
        "bpp": bpp,
        "bec": bec,
        "np": np,
        "plans": daq_plans,
        # ophyd-async devices at the prompt, without await: read(sim_meter), sync(coroutine)
        "read": read,
        "sync": sync,
    }
    broker = open_broker(runtime)
    if broker is not None:
        names["db"] = broker
    label_devices(runtime.devices)
    for name, plan in daq_plans.PLANS.items():
        names.setdefault(name, plan)
    for device_id, device in runtime.devices.items():
        if device_id in names or not device_id.isidentifier():
            log.warning(
                "device %r is not injected as a name (it would hide %s); use devices[%r]",
                device_id,
                "a standard session name" if device_id in names else "nothing: not a name",
                device_id,
            )
            continue
        names[device_id] = device
    return names


MOTORS = "motors"
DETECTORS = "detectors"


def label_devices(devices: Mapping[str, Any]) -> None:
    """Give each device bluesky's label: ``motors`` for what moves, ``detectors`` for what only
    reads. bluesky's magics (``%wa``, ``%ct``) find devices by these labels, not by type; a
    label the driver gave itself is kept."""
    from bluesky.protocols import Movable, Readable

    for device in devices.values():
        if isinstance(device, Movable):
            label = MOTORS
        elif isinstance(device, Readable):
            label = DETECTORS
        else:  # a bus or a controller object without read(): nothing a magic can use
            continue
        own = getattr(device, "_ophyd_labels_", None) or set()
        try:
            device._ophyd_labels_ = {*own, label}
        except AttributeError:  # a device with __slots__: the magics just do not list it
            log.info("device %r takes no labels: %%wa and %%ct do not list it", device)


def open_broker(runtime: Runtime) -> Any:
    """databroker's v1 ``Broker`` over the runtime's catalog (None without a catalog).

    The catalog is written by a thread of its own: ``db[-1]`` typed as the RunEngine returns
    would otherwise find the run before (or none), so every look-up waits for what the
    RunEngine has emitted to be written first (a few milliseconds when nothing is pending)."""
    catalog = runtime.catalog
    if catalog is None:
        return None
    from databroker.v1 import Broker

    class LabBroker(Broker):
        def __getitem__(self, key: Any) -> Any:
            catalog.flush()
            return super().__getitem__(key)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            catalog.flush()
            return super().__call__(*args, **kwargs)

    return LabBroker(catalog.client)


def _force_progress(RE: Any) -> None:  # noqa: N803
    from bluesky.utils import ProgressBarManager

    RE.waiting_hook = ProgressBarManager()


# --- what the magics show -----------------------------------------------------------------------


def format_holders(status: Mapping[str, Any]) -> str:
    """Who holds which port or VISA resource right now, and who waits (``%holders``)."""
    lines: list[str] = []
    ports = status.get("ports") or {}
    if "error" in ports and len(ports) == 1:
        lines.append(f"ports: error: {ports['error']}")
        ports = {}
    for name, port in sorted(ports.items()):
        holder = port.get("holder")
        held_for = port.get("held_for")
        if holder:
            held = f"held by {holder!r}" + (
                f" for {held_for:.3f} s" if isinstance(held_for, int | float) else ""
            )
        else:
            held = "free"
        waiters = ", ".join(repr(w) for w in port.get("waiters") or []) or "nobody"
        state = port.get("state") or "-"
        lines.append(f"{port.get('port') or name}  [{state}]  {held}; waiting: {waiters}")
    visa = status.get("visa") or {}
    for label, session in sorted(visa.items()):
        if label == "error":
            lines.append(f"VISA: error: {session}")
            continue
        holder = session.get("holder") if isinstance(session, Mapping) else None
        held = f"held by {holder!r}" if holder else "free"
        lines.append(f"{label}  [VISA]  {held}")
    if not lines:
        return "no ports or VISA resources open"
    return "\n".join(lines)


def register_magics(ipython: Any, runtime: Runtime) -> list[str]:
    """``%holders`` (port and VISA holders), ``%daqstatus`` (the whole runtime status) and
    bluesky's ``%wa``, ``%ct``, ``%mov``, ``%movr`` on the lab's RunEngine."""

    def holders(line: str = "") -> None:
        """Who holds each serial port and VISA resource, and who waits for it."""
        print(format_holders(runtime.status()))

    def daqstatus(line: str = "") -> None:
        """The runtime's status: devices, ports and holders, stack health, catalog."""
        print(runtime.format_status())

    ipython.register_magic_function(holders, "line", "holders")
    ipython.register_magic_function(daqstatus, "line", "daqstatus")
    bluesky_magics = _bluesky_magics(ipython, runtime.RE)
    ipython.register_magics(bluesky_magics)
    return ["holders", "daqstatus", *bluesky_magics.magics["line"]]


def _bluesky_magics(ipython: Any, RE: Any) -> Any:  # noqa: N803 - bluesky's name
    """bluesky's magics, on the lab's RunEngine: their class default is a RunEngine of its own
    on another event loop, where the lab's devices (connected on the lab's loop) cannot move."""
    from bluesky.magics import BlueskyMagics

    class LabMagics(BlueskyMagics):
        # bluesky's %mov and %movr leave RE.waiting_hook None when done: the session's
        # progress bars would be gone for every RE(...) after the first %mov. No
        # @magics_class here: it would replace the inherited table of magics by these two.
        def mov(self, line: str) -> None:
            hook = self.RE.waiting_hook
            try:
                return super().mov(line)
            finally:
                self.RE.waiting_hook = hook

        def movr(self, line: str) -> None:
            hook = self.RE.waiting_hook
            try:
                return super().movr(line)
            finally:
                self.RE.waiting_hook = hook

    magics = LabMagics(shell=ipython)
    magics.RE = RE
    magics.pbar_manager = RE.waiting_hook  # bars only where the session has them (a terminal)
    return magics


class OpenRuns:
    """RunEngine subscriber: the runs open right now (a paused run is open) and the last one
    that failed."""

    def __init__(self) -> None:
        self.uids: list[str] = []
        self.failed: str | None = None

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        if name == "start":
            self.uids.append(doc["uid"])
        elif name == "stop":
            uid = doc.get("run_start")
            if uid in self.uids:
                self.uids.remove(uid)
            if doc.get("exit_status") == "fail":
                self.failed = uid


def describe_interruption(exc: BaseException, runtime: Runtime, open_runs: OpenRuns) -> str | None:
    """One line for an exception that ends a cell, or None when the runtime already said it.

    A pause (Ctrl-C) names the run and the choices; a failure names the run and shows the first
    daqbridge error of its chain (the instrument, its port and the fix). An abort needs nothing
    here: the runtime logged "run UID aborted (exit status 'abort')" when the run closed.
    """
    from bluesky.utils import RunEngineInterrupted

    from daqbridge.errors import daqbridge_cause

    if isinstance(exc, RunEngineInterrupted):
        if runtime.RE is None or str(runtime.RE.state) != "paused":
            return None
        runs = ", ".join(open_runs.uids) or "(no run open)"
        return (
            f"daqbridge: run {runs} paused: RE.resume() continues it, RE.stop() ends it as "
            "'success', RE.abort() as 'abort' (its data is kept either way)."
        )
    error = daqbridge_cause(exc) or exc
    failed, open_runs.failed = open_runs.failed, None
    run = f"run {failed} failed (exit status 'fail'): " if failed else ""
    return f"daqbridge: {run}{type(error).__name__}: {error}"


def _only_aborts(record: logging.LogRecord) -> bool:
    """The prompt shows a failed run with its error (describe_interruption); the log line of an
    aborted run is the only word about it."""
    return getattr(record, "exit_status", "abort") == "abort"


def register_quiet_errors(ipython: Any, runtime: Runtime) -> Callable[..., Any]:
    """Show pauses, aborts and daqbridge errors at the prompt in one line (``%tb`` for more).

    IPython prints a traceback for every exception that ends a cell; bluesky raises
    RunEngineInterrupted for every pause, and an instrument's failure (a FailedStatus caused by
    a DaqbridgeError, or the error itself) already says which instrument, which port and the
    fix. The runtime's line about an aborted run goes to stderr with the other daqbridge lines.
    Returns the handler.
    """
    from bluesky.utils import FailedStatus, RunEngineInterrupted

    from daqbridge.errors import DaqbridgeError
    from daqbridge.runtime import ShutdownRequested

    open_runs = OpenRuns()
    if runtime.RE is not None:
        runtime.RE.subscribe(open_runs)
    runs_log = logging.getLogger("daqbridge.runtime.runs")
    if not any(getattr(h, "name", None) == "daqbridge-session" for h in runs_log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name("daqbridge-session")
        handler.setFormatter(logging.Formatter("daqbridge: %(message)s"))
        handler.addFilter(_only_aborts)
        runs_log.addHandler(handler)

    def show(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None):
        # Kept where %tb and %debug look for the last exception.
        sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
        sys.last_exc = value
        line = describe_interruption(value, runtime, open_runs)
        if line is not None:
            print(line, file=sys.stderr)
            if not isinstance(value, RunEngineInterrupted | ShutdownRequested):
                print("daqbridge: %tb shows the traceback.", file=sys.stderr)
        return []

    ipython.set_custom_exc(
        (DaqbridgeError, FailedStatus, RunEngineInterrupted, ShutdownRequested), show
    )
    return show


def describe_session(names: Mapping[str, Any]) -> str:
    """A short greeting: which lab, which devices, where the data goes."""
    runtime = names["runtime"]
    devices = sorted(runtime.devices)
    plans = sorted(
        n for n, v in names.items() if getattr(v, "__module__", "").startswith("daqbridge.plans")
    )
    where = runtime.catalog.where if runtime.catalog is not None else "no catalog"
    lines = [
        f"daqbridge: lab {runtime.profile.lab.name!r} ({runtime.profile.label}), data in {where}",
        f"  devices: {', '.join(devices)}",
        f"  plans:   bp.*, bps.*, bpp.*, {', '.join(plans)}",
        "  read(device) reads any device now; sync(...) waits for a coroutine "
        "(sync(sim_meter.power.get_value())).",
        "  %holders shows who holds each port, %daqstatus the whole runtime, %wa motors "
        "where the axes are; Ctrl-C pauses a run (RE.resume() / RE.abort()).",
    ]
    if runtime.failures:
        lines.append(f"  NOT STARTED: {', '.join(sorted(runtime.failures))}")
    return "\n".join(lines)
