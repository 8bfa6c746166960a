"""What the lab's worker tells the web panel: one call, allow-listed on the queue server.

The panel runs in its own process; the instruments live in the worker of ``daqbridge lab up``.
The queue server already carries calls into the worker (``function_execute``, in a background
thread, so it answers while a plan runs): the panel asks through it rather than through a channel
of its own. The answer is the runtime's own status report (daqbridge/runtime/_status.py), made
JSON-safe, plus the devices' latest readings with their units.

Readings cost wire traffic, so they are taken at most every ``READ_EVERY`` seconds however many
panels ask, and only while the RunEngine is idle: during a plan the panel takes the values from
the plan's own event documents and adds no transaction to the scan's ports.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

STATUS_FUNCTION = "lab_panel_status"
READ_EVERY = 2.0
"""Seconds between two readings of every device (the panel polls the status more often)."""
RECENT_LINES = 50
"""Lines per simulator the report carries (the simulator keeps them all)."""
READ_TIMEOUT = 3.0
"""Seconds one device may take to answer a read before the panel shows it as not answering."""


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars and arrays as numbers and lists, NaN as None, the rest as text."""
    try:
        return json.loads(json.dumps(value, default=_default, allow_nan=True), parse_constant=_nan)
    except (TypeError, ValueError):
        return str(value)


def _nan(_: str) -> None:
    return None


def _default(value: Any) -> Any:
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    return str(value)


def _number(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list) and len(value) > 16:
        return f"array of {len(value)}"  # frames and spectra: the plots show them, not the table
    return value


class PanelReporter:
    """Collects the status and the readings in the worker; thread-safe (the queue server runs
    each background call on a thread of its own)."""

    def __init__(self, runtime: Any, RE: Any, read_every: float = READ_EVERY) -> None:  # noqa: N803
        self.runtime = runtime
        self.RE = RE
        self.read_every = read_every
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._units: dict[str, dict[str, Any]] = {}
        self._read_at = 0.0

    def __call__(self) -> dict[str, Any]:
        from daqbridge.runtime._status import collect_status

        t0 = time.perf_counter()
        status = _plain(collect_status(self.runtime))
        with self._lock:
            if self._idle() and time.monotonic() - self._read_at >= self.read_every:
                self._read_all()
                self._read_at = time.monotonic()
            status["values"] = dict(self._values)
            status["values_age"] = round(time.monotonic() - self._read_at, 3)
        status["limits"] = self._limits()
        status["leases"] = self._leases()
        self._recent_lines(status)
        status["report_seconds"] = round(time.perf_counter() - t0, 6)
        return status

    def _leases(self) -> list[dict[str, Any]]:
        """One row per serial port (a multi-drop bus is its port) and VISA resource, with the
        transport's own statistics: who holds it, since when, who waits, how long waits and
        holds take. This is the table that shows why a scan is waiting."""
        resources = getattr(self.runtime, "resources", None)
        if resources is None:
            return []
        rows: list[dict[str, Any]] = []
        keys = ("holder", "held_for", "waiters", "transactions", "wait", "hold")
        for name, stats in resources.pool.status().items():
            row = {"resource": stats.get("port") or name, "kind": "serial"}
            row["state"] = stats.get("state")
            if stats.get("bus"):
                row["kind"] = "bus"
            row.update({k: stats.get(k) for k in keys})
            row["bytes"] = [stats.get("bytes_out"), stats.get("bytes_in")]
            rows.append(row)
        for label, stats in resources.visa.status().items():
            row = {"resource": stats.get("resource") or label, "kind": "visa", "state": "open"}
            row.update({k: stats.get(k) for k in keys})
            rows.append(row)
        return _plain(rows)

    def _recent_lines(self, status: dict[str, Any]) -> None:
        """The last lines each simulator received: what the panel shows as "the instrument saw
        this", and what a test checks to know that a refused plan sent nothing."""
        simulation = getattr(self.runtime, "simulation", None)
        instruments = (status.get("simulators") or {}).get("instruments") or {}
        if simulation is None:
            return
        for iid, simulator in list(simulation.simulators.items()):
            lines = getattr(simulator, "received_lines", None)
            if lines is not None and iid in instruments:
                instruments[iid]["recent_lines"] = [str(x) for x in list(lines)[-RECENT_LINES:]]

    def _idle(self) -> bool:
        return str(getattr(self.RE, "state", "")) == "idle"

    def _limits(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for device_id, device in self.runtime.devices.items():
            try:
                low, high = device.limits
                out[device_id] = [float(low), float(high)]
            except Exception:  # noqa: BLE001,S112 - not a positioner, or no limits set
                continue
        return out

    def _read_all(self) -> None:
        loop = self.RE.loop
        # A bus or a controller without readings of its own (its axes have them) is not read.
        devices = {
            device_id: device
            for device_id, device in self.runtime.devices.items()
            if hasattr(device, "read") and hasattr(device, "describe")
        }
        future = asyncio.run_coroutine_threadsafe(self._read_devices(devices), loop)
        try:
            self._values.update(future.result(READ_TIMEOUT + 1.0))
        except Exception as exc:  # noqa: BLE001 - the status must come back without values
            future.cancel()
            self._values["_error"] = f"{type(exc).__name__}: {exc}"

    async def _read_devices(self, devices: Mapping[str, Any]) -> dict[str, Any]:
        results = await asyncio.gather(
            *(self._read_one(device_id, device) for device_id, device in devices.items())
        )
        return dict(results)

    async def _read_one(self, device_id: str, device: Any) -> tuple[str, Any]:
        try:
            units = self._units.get(device_id)
            if units is None:
                described = await _maybe_await(device.describe())
                units = {k: v.get("units") for k, v in described.items()}
                self._units[device_id] = units
            reading = await asyncio.wait_for(_maybe_await(device.read()), READ_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - one silent device must not hide the others
            return device_id, {"error": f"{type(exc).__name__}: {exc}"}
        fields = {
            key: {
                "value": _number(r.get("value")),
                "timestamp": r.get("timestamp"),
                "units": units.get(key),
            }
            for key, r in reading.items()
        }
        return device_id, {"fields": fields}


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


def panel_functions(names: Mapping[str, Any]) -> dict[str, Callable[[], dict[str, Any]]]:
    """The functions the startup adds to the worker's namespace (allow-listed in
    daqbridge/cli/lab_startup/user_group_permissions.yaml)."""
    reporter = PanelReporter(names["runtime"], names["RE"])

    def lab_panel_status() -> dict[str, Any]:
        return reporter()

    lab_panel_status.__name__ = STATUS_FUNCTION
    return {STATUS_FUNCTION: lab_panel_status}
