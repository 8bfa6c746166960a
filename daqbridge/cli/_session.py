"""The beamline session: the names a scientist types at the prompt, built from a lab profile.

``build_session()`` starts the lab (a :class:`~daqbridge.runtime.Runtime`) and returns the
names to put in a namespace: ``RE``, ``catalog``, ``runtime``, ``devices``, every device by its
id, ``bp``/``bps``/``bpp``, the lab's plans and ``bec``. The IPython profile
(profiles/ipython/startup/) and a bluesky-queueserver startup script both call it, so the two
front ends cannot drift apart:

    # queue-server startup script (the queue server collects devices and plans from globals)
    from daqbridge.cli._session import build_session
    globals().update(build_session(progress=False, table=False))

Why it is built this way:

* The profile comes from the argument, else ``$DAQBRIDGE_PROFILE``, else the embedded simulated
  lab, the same rule as ``daqbridge run`` and ``daqbridge status`` (:func:`resolve_profile`).
* Plots only where a display exists: on a headless machine (ssh, CI, a queue server) matplotlib
  is switched to Agg and BestEffortCallback's plots are off, so nothing blocks on a window.
* Progress bars on moves (bluesky's ProgressBarManager as ``RE.waiting_hook``) only when
  stderr is a terminal: in a log file they are noise.
* Ctrl-C pauses the run in a session (``sigint="pause"``): the scientist decides between
  ``RE.resume()`` and ``RE.abort()``. The runtime already closes itself in order at interpreter
  exit (atexit).
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
    {"RE", "catalog", "runtime", "devices", "bp", "bps", "bpp", "bec", "plans", "np"}
)


def resolve_profile(profile: str | os.PathLike[str] | None = None) -> str | None:
    """The profile to load: ``profile``, else ``$DAQBRIDGE_PROFILE``, else None (embedded)."""
    if profile is not None and str(profile) != "":
        return str(profile)
    env = os.environ.get(PROFILE_ENV, "").strip()
    return env or None


def has_display() -> bool:
    """True when matplotlib windows can open: a desktop session on Linux, always elsewhere."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


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
    if not plots:
        bec.disable_plots()
    if not table:
        bec.disable_table()
        bec.disable_baseline()
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
    lab). ``plots``: let BestEffortCallback plot (default: when a display exists). ``table``:
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
    }
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
    """``%holders`` (port and VISA holders) and ``%daqstatus`` (the whole runtime status)."""

    def holders(line: str = "") -> None:
        """Who holds each serial port and VISA resource, and who waits for it."""
        print(format_holders(runtime.status()))

    def daqstatus(line: str = "") -> None:
        """The runtime's status: devices, ports and holders, stack health, catalog."""
        print(runtime.format_status())

    ipython.register_magic_function(holders, "line", "holders")
    ipython.register_magic_function(daqstatus, "line", "daqstatus")
    return ["holders", "daqstatus"]


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
        "  %holders shows who holds each port, %daqstatus the whole runtime; Ctrl-C pauses a "
        "run (RE.resume() / RE.abort()).",
    ]
    if runtime.failures:
        lines.append(f"  NOT STARTED: {', '.join(sorted(runtime.failures))}")
    return "\n".join(lines)
