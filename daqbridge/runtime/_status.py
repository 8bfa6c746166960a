"""What the runtime is doing right now: one dict for programs, one text for people.

The question a status page must answer in a lab is rarely "is it up" but "who is hogging the
port, which driver is restarting, are measurements being dropped, did the catalog keep up". Each
section is collected independently: a broken part shows its own error instead of hiding the
status of everything else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daqbridge.runtime._runtime import Runtime


def _section(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        return {"error": f"{type(exc).__name__}: {exc}"}


def _ports(rt: Runtime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, stats in rt.resources.pool.status().items():
        out[name] = {
            "port": stats.get("port"),
            "state": stats.get("state"),
            "holder": stats.get("holder"),
            "held_since": stats.get("held_since"),
            "held_for": stats.get("held_for"),
            "waiters": list(stats.get("waiters") or []),
            "transactions": stats.get("transactions"),
            "lost": stats.get("lost"),
            "reopens": stats.get("reopens"),
            "stale_bytes": stats.get("stale_bytes"),
            "settings": stats.get("settings"),
            "bus": stats.get("bus"),
        }
    return out


def _legacy(rt: Runtime) -> dict[str, Any]:
    legacy = rt.legacy
    if legacy is None:
        return {"enabled": False}
    dist = legacy.distributor
    subscribers = dist.stats()
    return {
        "enabled": True,
        "running": legacy.running,
        "instruments": legacy.health(),
        "published": dist.published,
        "dropped": sum(int(s.get("dropped", 0)) for s in subscribers.values()),
        "subscribers": subscribers,
        "last_stop": (
            dataclasses.asdict(legacy.last_stop_report)
            if legacy.last_stop_report is not None
            else None
        ),
    }


def _catalog(rt: Runtime) -> dict[str, Any]:
    catalog = rt.catalog
    if catalog is None:
        return {"open": False}
    out: dict[str, Any] = {
        "open": not getattr(catalog, "_closed", False),
        "where": catalog.where,
        "frames_dir": str(catalog.frames_dir),
        "recovered": len(catalog.recovered),
    }
    writer = getattr(catalog, "_writer", None)
    if writer is not None:
        out["writer"] = dataclasses.asdict(writer.stats)
    return out


def _run_engine(rt: Runtime) -> dict[str, Any]:
    RE = rt.RE
    if RE is None:
        return {"state": None}
    return {
        "state": str(RE.state),
        "scan_id": RE.md.get("scan_id"),
        "sigint": rt.sigint,
        "subscribers": sorted(rt._subscriptions),
    }


def _devices(rt: Runtime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for built in rt._native.values():
        for device_id in built.devices:
            out[device_id] = {
                "instrument": built.id,
                "stack": "native",
                "driver": built.driver,
                "resource": built.resource,
                "connected": built.connected,
            }
    for device_id, instrument_id in rt._legacy_ids.items():
        out[device_id] = {
            "instrument": instrument_id,
            "stack": "legacy",
            "adapter": device_id in rt._devices,
        }
    return out


def collect_status(rt: Runtime) -> dict[str, Any]:
    """Everything ``Runtime.status()`` reports, as plain data (JSON-friendly apart from stats)."""
    profile = rt.profile
    status: dict[str, Any] = {
        "time": time.time(),
        "state": rt.state,
        "profile": {
            "lab": profile.lab.name,
            "source": profile.label,
            "simulated": profile.simulation.enabled,
            "stacks": {"native": profile.stacks.native, "legacy": profile.stacks.legacy},
        },
        "data_dir": str(rt.data_dir),
        "run_engine": _section(lambda: _run_engine(rt)),
        "devices": _section(lambda: _devices(rt)),
        "failures": {k: str(v) for k, v in rt.failures.items()},
        "notes": {k: list(v) for k, v in rt.notes.items() if v},
        "ports": _section(lambda: _ports(rt)) if rt.resources is not None else {},
        "visa": _section(rt.resources.visa.status) if rt.resources is not None else {},
        "legacy": _section(lambda: _legacy(rt)),
        "catalog": _section(lambda: _catalog(rt)),
        "simulators": (
            _section(rt.simulation.status) if rt.simulation is not None else {"enabled": False}
        ),
    }
    if rt.shutdown_report is not None:
        status["shutdown"] = rt.shutdown_report.as_dict()
    return status


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def format_status(status: dict[str, Any]) -> str:
    """The status as text for a terminal (``daqbridge status``, ``%daqbridge_status``)."""
    p = status["profile"]
    lines = [
        f"daqbridge runtime: {status['state']}  lab {p['lab']!r}  profile {p['source']}"
        + ("  (simulated)" if p["simulated"] else ""),
        f"  data: {status['data_dir']}",
    ]
    re_ = status.get("run_engine") or {}
    lines.append(f"  RunEngine: {re_.get('state')}  scan_id {re_.get('scan_id')}")

    lines.append("devices:")
    for device_id, d in sorted((status.get("devices") or {}).items()):
        if "error" in d and len(d) == 1:
            lines.append(f"  error: {d['error']}")
            break
        if d.get("stack") == "native":
            state = "connected" if d.get("connected") else "NOT connected"
            lines.append(
                f"  {device_id:<24} native  {d.get('driver')}  {d.get('resource')}  {state}"
            )
        else:
            adapter = "adapter" if d.get("adapter") else "no adapter"
            lines.append(f"  {device_id:<24} legacy  {d.get('instrument')}  ({adapter})")
    for iid, why in (status.get("failures") or {}).items():
        lines.append(f"  FAILED {iid}: {why}")
    for iid, notes in (status.get("notes") or {}).items():
        for note in notes:
            lines.append(f"  note {iid}: {note}")

    lines.append("ports:")
    ports = status.get("ports") or {}
    if "error" in ports and len(ports) == 1:
        lines.append(f"  error: {ports['error']}")
    else:
        for name, port in sorted(ports.items()):
            holder = port.get("holder")
            held = f"held by {holder!r} for {_age(port.get('held_for'))}" if holder else "free"
            waiters = ", ".join(port.get("waiters") or []) or "none"
            lines.append(
                f"  {port.get('port') or name}  {port.get('state')}  {held}  waiting: {waiters}"
                f"  transactions {port.get('transactions')}"
            )
    for label, session in sorted((status.get("visa") or {}).items()):
        if label == "error":
            lines.append(f"  VISA error: {session}")
            continue
        holder = session.get("holder")
        held = f"held by {holder!r}" if holder else "free"
        lines.append(f"  {label}  VISA  {held}")

    legacy = status.get("legacy") or {}
    if legacy.get("enabled"):
        lines.append(
            f"legacy stack: {'running' if legacy.get('running') else 'stopped'}  "
            f"published {legacy.get('published')}  dropped {legacy.get('dropped')}"
        )
        for iid, h in sorted((legacy.get("instruments") or {}).items()):
            err = f"  last error: {h.get('last_error')}" if h.get("last_error") else ""
            lines.append(
                f"  {iid:<24} {h.get('state')}  polls {h.get('polls')}  "
                f"restarts {h.get('restarts')}{err}"
            )
    elif "error" in legacy:
        lines.append(f"legacy stack: error: {legacy['error']}")
    else:
        lines.append("legacy stack: off")

    cat = status.get("catalog") or {}
    if cat.get("open"):
        writer = cat.get("writer") or {}
        lines.append(
            f"catalog: {cat.get('where')}  documents {writer.get('documents', 0)}  "
            f"queued {writer.get('queued', 0)}  runs {writer.get('runs_written', 0)}"
            + (f"  errors {len(writer['errors'])}" if writer.get("errors") else "")
        )
    elif "error" in cat:
        lines.append(f"catalog: error: {cat['error']}")
    else:
        lines.append("catalog: closed")

    sims = status.get("simulators") or {}
    if sims.get("instruments"):
        lines.append(f"simulators (speed {sims.get('speed')}):")
        for iid, s in sorted(sims["instruments"].items()):
            lines.append(f"  {iid:<24} {s.get('kind')}  {s.get('transport')}  {s.get('address')}")
        for coupling in sims.get("couplings") or []:
            lines.append(f"  coupling: {coupling}")

    shutdown = status.get("shutdown")
    if shutdown:
        lines.append(f"shutdown: {'clean' if shutdown['clean'] else 'NOT clean'}")
        for ph in shutdown["phases"]:
            lines.append(f"  {ph['phase']:<11} {ph['outcome']:<8} {ph['duration']:.2f} s")
    return "\n".join(lines)
