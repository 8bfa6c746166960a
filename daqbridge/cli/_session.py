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
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
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
