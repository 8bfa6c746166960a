"""Experiments at the speed of the hardware (issue 16, first part: measure, do not optimise).

    python benchmarks/bench_experiments.py [--full] [--only raster-1mm,polarization]
    python -m benchmarks --only experiments [--full]
    from benchmarks.bench_experiments import run   # rows {name, value, unit, target, ratio, ok}

The simulated lab (the embedded profile, ``profiles/sim.toml``) is started with
``Runtime.from_profile`` at ``[simulation] speed = 1.0`` and ``byte_time = true`` on every
serial simulator (ESP300, 1830-C, MaiTai, Elliptec bus: each reply costs its bytes x 10 / baud),
and the lab's own plans run on it:

* ``raster`` of the ESP300 stage reading the 1830-C (snake), 0.1 mm and 1 mm steps;
* ``polarization_scan`` of the three Elliptec mounts of one bus turning together;
* ``wavelength_scan`` of the MaiTai, the meter's wavelength set at every point;
* ``exposure_series`` of the camera, one frame per exposure;
* ``raster`` with the camera as the detector (a frame per point).

Full form (``--full``, or ``DAQBRIDGE_BENCH_FULL=1``): 21 x 21 rasters (-1..1 mm and -10..10
mm), 37 angles (-90..90 deg, mount c's soft limits), 50 wavelengths (the profile's 700-1000 nm),
20 frames (5..100 ms), a 10 x 10 camera raster (1 mm steps); about 7 minutes. Quick form (the
default, also of ``python -m benchmarks``): 5 x 5, 10 angles, 10 wavelengths, 5 frames (20..100
ms), 5 x 5; about a minute. Every experiment's wall time is one RunEngine call of its plan (the
lab's start-up is not in it); one untimed ``count`` first creates the catalog's tables.

Reply latencies are the simulators' own defaults (ESP300 ``response_time`` 0, 1830-C 2 ms,
MaiTai and Elliptec 5 ms): INSTRUMENTS.md gives upper bounds only (the 1830-C "within about
500 ms", the MaiTai "up to 2 s"), not a typical latency.

The floor of each experiment is computed from the simulators' own models, point by point, as
``max(command spacing, move + completion + read)``:

* move: the motion of every device that moves at that point, concurrent devices counted once
  (the longest): ESP300 axes by the simulator's trapezoidal profile (``_Motion.plan`` of
  ``daqbridge.sim.esp300`` with each axis's ``velocity``/``acceleration``/``deceleration``),
  Elliptec mounts by ``distance / (max_speed_deg_s x velocity %) + MOTION_OVERHEAD_S``, the
  MaiTai by ``distance / tuning_rate_nm_s``; the meter's ``W`` set is silent and takes no time;
* completion: the replies without which a driver cannot know the move ended and succeeded,
  each costing the device's reply latency plus its bytes x 10 / baud, replies on one line one
  after another: ESP300 ``nMD?`` (per moved axis) and ``TE?``; the Elliptec ``PO`` each mount
  sends when its move ends; the MaiTai's ``READ:WAV?`` at the target;
* read: the replies that carry the point's data, lines in parallel: ESP300 ``nTP?`` of each
  moved axis, the 1830-C's ``D?`` (the length of the reading recorded, formatted by the
  simulator's ``short_scientific``), the MaiTai's ``READ:POWER?``, a camera frame's exposure +
  readout (``SimulatedCameraBackend.readout_time_s``);
* command spacing: the Elliptec simulator sends a move that comes less than
  ``command_spacing_s`` after the previous one to the same mount to 0, so a point of a
  polarisation scan lasts at least that long.

Reply lengths come from scratch simulators of the same classes at infinite speed, asked the
same commands (so no reply format is re-typed here). Commands from the host are not charged:
the simulators do not time the bytes they receive (``byte_time`` covers replies only), so
neither does the floor. The shutter's open/close (``SHUTTER?`` read back twice) is charged once
per wavelength scan.

Where the time above the floor goes (printed per experiment), all measured in the same run:

* RunEngine messages (a ``msg_hook`` stamping every message; the time to the next message is
  charged to this one): moves (``set`` and the ``wait`` for them: motion, completion polling,
  the poll cadence), detectors (``trigger``, ``read`` and their ``wait``: the I/O of a point),
  the lab's baseline readings at the start and end of each run, documents (``open_run``,
  ``save``, ``close_run``: the catalog writer and the other callbacks run there), the rest of
  the RunEngine; each beside its share of the floor;
* per serial line: replies sent by the simulator against the floor's, reply bytes on the wire
  (``bytes_in`` of the leased port) and their wire time, time spent waiting for a lease and
  holding one (the transport's lease statistics);
* the process's CPU time over the run (every thread: a 2-core machine shared with others
  makes wall time above the floor partly a wait for a core).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import sys
import tempfile
import time
import tomllib
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

FULL_ENV = "DAQBRIDGE_BENCH_FULL"
STACKS_ENV = "DAQBRIDGE_BENCH_STACKS"
STACKS = ("native", "profile")
"""``native``: every instrument on its native stack, the migration's end state, where what is
above the floor is the orchestrator's alone (the default). ``profile``: the stacks the embedded
profile gives (the meter in shadow mode, its legacy twin reading the same line and polling it at
5 Hz; the MaiTai on the legacy stack), which adds the twin's and the pollers' bytes."""
SERIAL_DRIVERS = ("esp300", "newport1830c", "maitai", "elliptec")

STAGE, METER, LASER, BUS, CAMERA = (
    "sim_stage",
    "sim_meter",
    "sim_laser",
    "sim_rotators",
    "sim_camera",
)


@dataclass(frozen=True)
class Sizes:
    raster: int  # points per side of the meter rasters
    angles: int
    wavelengths: int
    frames: int
    camera_raster: int


QUICK = Sizes(raster=5, angles=10, wavelengths=10, frames=5, camera_raster=5)
FULL = Sizes(raster=21, angles=37, wavelengths=50, frames=20, camera_raster=10)

EXPERIMENTS = (
    "raster-0.1mm",
    "raster-1mm",
    "fly-0.1mm",
    "fly-1mm",
    "fly-1mm-10mm/s",
    "fly-polarization",
    "polarization",
    "wavelength",
    "exposure-series",
    "camera-raster",
)


# --- the floor -----------------------------------------------------------------------------------


@dataclass
class Reply:
    """One reply on one line: latency (real s) + bytes x 10 / baud."""

    line: str
    nbytes: int
    latency: float = 0.0


@dataclass
class Point:
    move_s: float = 0.0  # concurrent motions: the longest
    completion: list[Reply] = field(default_factory=list)
    read: list[Reply] = field(default_factory=list)
    exposure_s: float = 0.0  # camera exposure + readout, in parallel with the lines' reads
    min_period_s: float = 0.0


@dataclass
class Floor:
    points: list[Point]
    extra: list[Reply] = field(default_factory=list)  # once per run (shutter read-backs)

    def split(self, bauds: dict[str, int]) -> tuple[float, float]:
        """(move part, read part) of the floor, seconds."""
        move = read = 0.0
        for p in self.points:
            m = p.move_s + _lines(p.completion, bauds)
            r = max(p.exposure_s, _lines(p.read, bauds))
            move += max(m, p.min_period_s - r)
            read += r
        return move + _lines(self.extra, bauds), read

    def total(self, bauds: dict[str, int]) -> float:
        return sum(self.split(bauds))

    def replies(self) -> dict[str, list[int]]:
        """line -> [replies, bytes] the floor counts."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for p in self.points:
            for r in (*p.completion, *p.read):
                out[r.line][0] += 1
                out[r.line][1] += r.nbytes
        for r in self.extra:
            out[r.line][0] += 1
            out[r.line][1] += r.nbytes
        return out


def _lines(replies: Iterable[Reply], bauds: dict[str, int]) -> float:
    """Replies on one line follow each other; different lines run in parallel."""
    per_line: dict[str, float] = defaultdict(float)
    for r in replies:
        per_line[r.line] += r.latency + r.nbytes * 10.0 / bauds[r.line]
    return max(per_line.values(), default=0.0)


def _reply_bytes(simulator: Any, command: str) -> int:
    """Length of the reply a scratch simulator (infinite speed) gives to ``command``."""
    simulator.write_from_host(command.encode("ascii"))
    reply = simulator.read_to_host()
    if not reply:
        raise RuntimeError(f"{type(simulator).__name__} did not answer {command!r}")
    return len(reply)


def _latency(simulator: Any, attribute: str) -> float:
    """A simulator's reply latency in real seconds (its device seconds / speed)."""
    return simulator.real_delay(getattr(simulator, attribute))


def _esp300_moves(
    esp: Any, axes: dict[str, int], path: list[dict[str, float]], start: dict[str, float]
) -> tuple[list[float], list[list[str]]]:
    """Motion time of each point of ``path`` (axis name -> target, from ``start``) and the
    axes that move.

    Uses the simulator's own trapezoid (``_Motion.plan``: private to the simulator module, but
    it is the very model the simulated stage moves by) with each axis's VA/AC/AG."""
    from daqbridge.sim.esp300 import _Motion

    here = dict(start)
    times, moved = [], []
    for targets in path:
        longest, names = 0.0, []
        for name, target in targets.items():
            if abs(target - here[name]) < 1e-12:
                continue
            ax = esp.axes[axes[name]]
            plan = _Motion.plan(
                0.0, here[name], target, ax.velocity, ax.acceleration, ax.deceleration
            )
            longest = max(longest, esp.real_delay(plan.travel_time))
            names.append(name)
            here[name] = target
        times.append(longest)
        moved.append(names)
    return times, moved


def _esp300_replies(esp: Any, axes: dict[str, int], line: str) -> dict[str, Any]:
    from daqbridge.sim.esp300 import ESP300Simulator

    scratch = ESP300Simulator(speed=math.inf, axes=esp.axis_count)
    lat = _latency(esp, "response_time")

    def tp(name: str, value: float) -> Reply:
        scratch.set_position(axes[name], value)
        return Reply(line, _reply_bytes(scratch, f"{axes[name]}TP?\r\n"), lat)

    return {
        "md": {n: Reply(line, _reply_bytes(scratch, f"{axes[n]}MD?\r\n"), lat) for n in axes},
        "te": Reply(line, _reply_bytes(scratch, "TE?\r\n"), lat),
        "tp": tp,
    }


def _raster_path(x_range, y_range) -> list[dict[str, float]]:
    """The snake of ``bp.grid_scan(..., snake_axes=True)``: only the axis that changes moves."""
    (x0, x1, nx), (y0, y1, ny) = x_range, y_range
    xs = [x0 + (x1 - x0) * i / (nx - 1) for i in range(nx)] if nx > 1 else [x0]
    ys = [y0 + (y1 - y0) * j / (ny - 1) for j in range(ny)] if ny > 1 else [y0]
    path, last = [], {}
    for j, y in enumerate(ys):
        for x in xs if j % 2 == 0 else xs[::-1]:
            point = {"y": y, "x": x}
            path.append({k: v for k, v in point.items() if last.get(k) != v})
            last = point
    return path


def raster_floor(
    lab: Lab, x_range, y_range, detector: str, readings: list[float], start: dict[str, float]
) -> Floor:
    esp = lab.simulator(STAGE)
    axes = lab.stage_axes
    path = _raster_path(x_range, y_range)
    times, moved = _esp300_moves(esp, axes, path, start)
    esp_replies = _esp300_replies(esp, axes, STAGE)
    points = []
    for i, (targets, move_s, names) in enumerate(zip(path, times, moved, strict=True)):
        p = Point(move_s=move_s)
        if names:
            p.completion = [esp_replies["md"][n] for n in names] + [esp_replies["te"]]
            p.read = [esp_replies["tp"](n, targets[n]) for n in names]
        if detector == METER:
            p.read.append(lab.meter_reply(readings[i] if i < len(readings) else 0.0))
        else:
            camera = lab.simulator(CAMERA)
            p.exposure_s = _real(camera.frame_period_s(), camera.speed)
        points.append(p)
    return Floor(points)


def fly_floor(
    lab: Lab, x_range, y_range, row_velocity: float, run_up: float, start: dict[str, float]
) -> Floor:
    """The motion itself: to the first row's run-up at the axis's own velocity, then each row
    (run-up to run-out, the whole trapezoid) at ``row_velocity``, the y step between rows (the
    snake: x does not move between rows); per move the ``nMD?`` + ``TE?`` that tell it ended.
    The reads overlap the motion, so they cost nothing here."""
    from daqbridge.sim.esp300 import _Motion

    esp = lab.simulator(STAGE)
    axes = lab.stage_axes
    esp_replies = _esp300_replies(esp, axes, STAGE)
    (x0, x1, _), (y0, y1, ny) = x_range, y_range
    ys = [y0 + (y1 - y0) * j / (ny - 1) for j in range(ny)] if ny > 1 else [y0]
    sign = 1.0 if x1 >= x0 else -1.0
    rows = [
        (x0 - sign * run_up, x1 + sign * run_up)
        if j % 2 == 0
        else (x1 + sign * run_up, x0 - sign * run_up)
        for j in range(len(ys))
    ]

    def travel(name: str, p0: float, p1: float, velocity: float | None = None) -> float:
        if abs(p1 - p0) < 1e-12:
            return 0.0
        ax = esp.axes[axes[name]]
        v = ax.velocity if velocity is None else velocity
        plan = _Motion.plan(0.0, p0, p1, v, ax.acceleration, ax.deceleration)
        return esp.real_delay(plan.travel_time)

    def done(names: list[str]) -> list[Reply]:
        return [esp_replies["md"][n] for n in names] + [esp_replies["te"]]

    points = []
    here = dict(start)
    for y, (begin, end) in zip(ys, rows, strict=True):
        to_row = {"y": travel("y", here["y"], y), "x": travel("x", here["x"], begin)}
        moved = [n for n, t in to_row.items() if t > 0]
        points.append(Point(move_s=max(to_row.values()), completion=done(moved) if moved else []))
        points.append(Point(move_s=travel("x", begin, end, row_velocity), completion=done(["x"])))
        here = {"x": end, "y": y}
    return Floor(points)


def polarization_floor(
    lab: Lab,
    angles: list[float],
    readings: list[float],
    start: dict[str, float],
    addresses: list[str] | None = None,
) -> Floor:
    from daqbridge.sim.elliptec import MOTION_OVERHEAD_S, ElliptecBusSimulator

    bus = lab.simulator(BUS)
    addresses = list(lab.mounts.values()) if addresses is None else addresses
    here = dict(start)
    scratch = ElliptecBusSimulator(speed=math.inf, addresses=addresses)
    # The PO a mount sends when its move ends carries no latency in the simulator.
    po = {a: Reply(BUS, _reply_bytes(scratch, f"{a}gp")) for a in addresses}
    # No public accessor of a mount's velocity %: read the simulator's own mount state.
    speed = {
        a: bus.max_speed_deg_s * bus._mount(a).velocity_pct / 100.0  # noqa: SLF001
        for a in addresses
    }
    spacing = bus.real_delay(bus.command_spacing_s) if bus.enforce_command_spacing else 0.0
    points = []
    for i, angle in enumerate(angles):
        moving = [a for a in addresses if abs(angle - here[a]) > 1e-9]
        move_s = max(
            (bus.real_delay(abs(angle - here[a]) / speed[a] + MOTION_OVERHEAD_S) for a in moving),
            default=0.0,
        )
        for a in moving:
            here[a] = angle
        points.append(
            Point(
                move_s=move_s,
                completion=[po[a] for a in moving],
                read=[lab.meter_reply(readings[i] if i < len(readings) else 0.0)],
                min_period_s=spacing if moving else 0.0,
            )
        )
    return Floor(points)


def wavelength_floor(
    lab: Lab, points_nm: list[float], readings: list[float], start_nm: float
) -> Floor:
    from daqbridge.sim.maitai import MaiTaiSimulator

    laser = lab.simulator(LASER)
    lat = _latency(laser, "reply_latency")
    scratch = MaiTaiSimulator(
        speed=math.inf,
        warmed_up=True,
        emission_on=True,
        shutter_open=True,
        reply_terminator=lab.laser_terminator,
    )
    here = start_nm
    points = []
    for i, nm in enumerate(points_nm):
        scratch.write_from_host(f"WAVELENGTH {nm:g}\r".encode())
        move_s = laser.real_delay(abs(nm - here) / laser.tuning_rate_nm_s)
        here = nm
        points.append(
            Point(
                move_s=move_s,
                completion=[Reply(LASER, _reply_bytes(scratch, "READ:WAV?\r"), lat)],
                read=[
                    Reply(LASER, _reply_bytes(scratch, "READ:POWER?\r"), lat),
                    lab.meter_reply(readings[i] if i < len(readings) else 0.0),
                ],
            )
        )
    shutter = Reply(LASER, _reply_bytes(scratch, "SHUTTER?\r"), lat)
    return Floor(points, extra=[shutter, shutter])


def exposure_floor(lab: Lab, exposures_ms: list[float]) -> Floor:
    camera = lab.simulator(CAMERA)
    readout = camera.readout_time_s()  # device seconds; the ROI does not change in the series
    return Floor(
        [Point(exposure_s=_real(e / 1000.0 + readout, camera.speed)) for e in exposures_ms]
    )


def _real(device_seconds: float, speed: float) -> float:
    return 0.0 if math.isinf(speed) else device_seconds / speed


# --- measuring -----------------------------------------------------------------------------------


_BOUNDARIES = {"save", "checkpoint", "declare_stream", "open_run", "collect"}
_DOCUMENTS = {"open_run", "save", "close_run", "declare_stream", "collect"}
_FLY = {"prepare", "kickoff", "complete"}
FLY_ROWS = "fly rows (prepare + kickoff + complete + wait)"


class MessageClock:
    """``RE.msg_hook``: stamps every message; the time until the next one is charged to it."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, str, str | None]] = []

    def __call__(self, msg: Any) -> None:
        name = msg.kwargs.get("name") if msg.command == "create" else None
        self.stamps.append((time.perf_counter(), msg.command, name))

    def breakdown(self, t_start: float, t_end: float) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        if not self.stamps:
            out["RunEngine (other)"] = t_end - t_start
            return out
        out["RunEngine (other)"] += self.stamps[0][0] - t_start
        kinds = self._classify()
        for i, (t, _, _) in enumerate(self.stamps):
            nxt = self.stamps[i + 1][0] if i + 1 < len(self.stamps) else t_end
            out[kinds[i]] += nxt - t
        return out

    def _classify(self) -> list[str]:
        kinds: list[str] = []
        block_start = 0  # first message after the last boundary
        last_action = None
        in_baseline = False
        for i, (_, command, name) in enumerate(self.stamps):
            if command == "create" and name == "baseline":
                # The baseline's triggers and their wait came before its 'create'.
                for j in range(block_start, i):
                    kinds[j] = "baseline readings"
                in_baseline = True
            if in_baseline:
                kind = "baseline readings"
            elif command == "set":
                kind, last_action = "moves (set + wait)", "set"
            elif command == "trigger":
                kind, last_action = "detectors (trigger + read + wait)", "trigger"
            elif command in _FLY:
                kind, last_action = FLY_ROWS, "fly"
            elif command == "wait":
                kind = (
                    "moves (set + wait)"
                    if last_action == "set"
                    else FLY_ROWS
                    if last_action == "fly"
                    else "detectors (trigger + read + wait)"
                )
            elif command in ("read", "create", "describe"):
                kind = "detectors (trigger + read + wait)"
            elif command in _DOCUMENTS:
                kind = "documents (open/save/close: catalog, callbacks)"
            else:
                kind = "RunEngine (other)"
            kinds.append(kind)
            if command in _BOUNDARIES:
                block_start = i + 1
                last_action = None
                if command == "save":
                    in_baseline = False
        return kinds


@dataclass
class LineSnapshot:
    replies: int
    bytes_in: int
    wait_total: float
    hold_total: float


def _total(summary: dict[str, Any]) -> float:
    return float(summary["mean"]) * int(summary["count"])


class Lab:
    """The running simulated lab and what the floors need to know about it."""

    def __init__(self, data_dir: str, stacks: str = "native") -> None:
        from daqbridge.config import Profile, load_profile
        from daqbridge.runtime import Runtime

        # The embedded simulated lab (daqbridge/profiles/sim.toml = profiles/sim.toml).
        data = tomllib.loads(Profile.default_path().read_text(encoding="utf-8"))
        data["simulation"]["speed"] = 1.0
        for inst in data["instruments"]:
            if stacks == "native":
                inst["stack"] = "native"
                inst.pop("polling_rate_hz", None)  # a legacy driver's setting
            if inst.get("driver") in SERIAL_DRIVERS:
                inst.setdefault("sim", {}).setdefault("options", {})["byte_time"] = True
        entries = {i["id"]: i for i in data["instruments"]}
        self.stage_axes = {a["name"]: a["number"] for a in entries[STAGE]["esp300"]["axes"]}
        self.mounts = {a["name"]: a["address"] for a in entries[BUS]["elliptec"]["addresses"]}
        self.laser_limits = entries[LASER]["maitai"]["wavelength_limits"]
        self.laser_terminator = entries[LASER]["maitai"].get("reply_terminator", "LF")
        self.runtime = Runtime.from_profile(load_profile(data), data_dir=data_dir, sigint="abort")
        self.bauds = {
            iid: sim.baudrate
            for iid, sim in self.runtime.simulation.simulators.items()
            if hasattr(sim, "baudrate")
        }

    def __getitem__(self, device_id: str) -> Any:
        return self.runtime[device_id]

    def simulator(self, instrument_id: str) -> Any:
        return self.runtime.simulation.simulator(instrument_id)

    def meter_reply(self, watts: float) -> Reply:
        """A ``D?`` reply carrying ``watts``, formatted as the simulator formats it."""
        from daqbridge.sim.newport1830c import Newport1830CSimulator, short_scientific

        meter = self.simulator(METER)
        n = len(short_scientific(watts)) + len(Newport1830CSimulator.reply_terminator)
        return Reply(METER, n, _latency(meter, "response_time"))

    def lines(self) -> dict[str, LineSnapshot]:
        ports = self.runtime.resources.pool.ports.values()
        out = {}
        for iid, sim in self.runtime.simulation.simulators.items():
            if iid not in self.bauds:
                continue
            address = self.runtime.simulation.ports.get(iid)
            stats = [p.stats() for p in ports if address == p.url or address in p.aliases]
            out[iid] = LineSnapshot(
                replies=sim.replies_sent,
                bytes_in=sum(s["bytes_in"] for s in stats),
                wait_total=sum(_total(s["wait"]) for s in stats),
                hold_total=sum(_total(s["hold"]) for s in stats),
            )
        return out

    def close(self) -> None:
        self.runtime.close()


@dataclass
class Result:
    name: str
    points: int
    floor: Floor
    wall: float
    cpu: float
    messages: dict[str, float]
    lines: dict[str, tuple[LineSnapshot, LineSnapshot]]
    step_floor: float | None = None  # fly rasters: the floor of the step raster of the same grid
    fly: dict[str, float] = field(default_factory=dict)  # fly rasters: samples, position errors


class Recorder:
    """Runs one plan through the lab, timing it and collecting the primary stream's data."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.descriptors: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        re = lab.runtime.RE
        re.subscribe(self._descriptor, "descriptor")
        re.subscribe(self._event, "event")
        re.subscribe(self._event_page, "event_page")
        self.timestamps: list[dict[str, float]] = []

    def _descriptor(self, name: str, doc: dict[str, Any]) -> None:
        self.descriptors[doc["uid"]] = doc.get("name", "")

    def _event(self, name: str, doc: dict[str, Any]) -> None:
        if self.descriptors.get(doc["descriptor"]) == "primary":
            self.events.append(doc["data"])
            self.timestamps.append(doc["timestamps"])

    def _event_page(self, name: str, doc: dict[str, Any]) -> None:
        # A flyer's collect emits pages (bluesky 1.15), a step plan's save single events.
        from event_model import unpack_event_page

        if self.descriptors.get(doc["descriptor"]) == "primary":
            for event in unpack_event_page(doc):
                self.events.append(event["data"])
                self.timestamps.append(event["timestamps"])

    def run(self, plan: Any) -> tuple[float, float, dict[str, float], dict[str, Any]]:
        self.events, self.timestamps = [], []
        re = self.lab.runtime.RE
        clock = MessageClock()
        before = self.lab.lines()
        re.msg_hook = clock
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            # The lab's callbacks print peak statistics and plot paths: not this report's.
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # bluesky's PeakStats divides by a zero sum on a flat (dark) reading.
                warnings.simplefilter("ignore", RuntimeWarning)
                self.lab.runtime.run(plan)
        finally:
            t1 = time.perf_counter()
            re.msg_hook = None
        cpu = time.process_time() - c0
        after = self.lab.lines()
        lines = {k: (before[k], after[k]) for k in after if k in before}
        return t1 - t0, cpu, clock.breakdown(t0, t1), lines

    def readings(self, key: str) -> list[float]:
        return [float(e.get(key, 0.0)) for e in self.events]


def _linspace(start: float, stop: float, num: int) -> list[float]:
    if num == 1:
        return [start]
    return [start + (stop - start) * i / (num - 1) for i in range(num)]


def run_experiment(name: str, lab: Lab, rec: Recorder, sizes: Sizes) -> Result:
    from daqbridge.plans import exposure_series, polarization_scan, raster, wavelength_scan

    meter_key = f"{METER}_power"
    if name in ("raster-0.1mm", "raster-1mm", "camera-raster"):
        n = sizes.camera_raster if name == "camera-raster" else sizes.raster
        step = 0.1 if name == "raster-0.1mm" else 1.0
        half = step * (n - 1) / 2
        rng = (-half, half, n)
        detector = CAMERA if name == "camera-raster" else METER
        # The floor starts from where the stage is: read before the run moves it.
        esp = lab.simulator(STAGE)
        start = {k: esp.axis_position(v) for k, v in lab.stage_axes.items()}
        wall, cpu, messages, lines = rec.run(
            raster(lab["sim_stage_x"], lab["sim_stage_y"], lab[detector], rng, rng)
        )
        floor = raster_floor(lab, rng, rng, detector, rec.readings(meter_key), start)
        points = n * n
    elif name == "fly-polarization":
        wall, cpu, messages, lines, floor, step_floor, fly = _fly_turn(lab, rec, sizes)
        return Result(name, sizes.angles, floor, wall, cpu, messages, lines, step_floor, fly)
    elif name.startswith("fly-"):
        wall, cpu, messages, lines, floor, step_floor, fly = _fly_experiment(name, lab, rec, sizes)
        n = sizes.raster
        return Result(name, n * n, floor, wall, cpu, messages, lines, step_floor, fly)
    elif name == "polarization":
        # -90..90 deg: mount c's soft limits in the profile; every mount turns together.
        angles = _linspace(-90.0, 90.0, sizes.angles)
        bus = lab.simulator(BUS)
        start = {a: bus.position_deg(a) for a in lab.mounts.values()}
        rotators = [lab[f"{BUS}_{m}"] for m in lab.mounts]
        wall, cpu, messages, lines = rec.run(
            polarization_scan(rotators[0], lab[METER], angles, extra_rotators=rotators[1:])
        )
        floor = polarization_floor(lab, angles, rec.readings(meter_key), start)
        points = len(angles)
    elif name == "wavelength":
        lo, hi = lab.laser_limits
        nm = _linspace(float(lo), float(hi), sizes.wavelengths)
        start_nm = lab.simulator(LASER).wavelength_nm()
        wall, cpu, messages, lines = rec.run(
            wavelength_scan(lab[LASER], lab[METER], lo, hi, len(nm))
        )
        floor = wavelength_floor(lab, nm, rec.readings(meter_key), start_nm)
        points = len(nm)
    elif name == "exposure-series":
        full = [5.0 * (i + 1) for i in range(20)]  # 5 .. 100 ms
        exposures = full if sizes.frames >= 20 else full[3::4][: sizes.frames]
        wall, cpu, messages, lines = rec.run(exposure_series(lab[CAMERA], exposures))
        floor = exposure_floor(lab, exposures)
        points = len(exposures)
    else:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return Result(name, points, floor, wall, cpu, messages, lines)


FLY_TURN_VELOCITY_PCT = 50
"""Mount velocity of the flown polarisation turn: 150 deg/s, about 2.8 deg per meter sample,
more samples than the step scan's 37 angles."""


def _fly_turn(lab: Lab, rec: Recorder, sizes: Sizes) -> tuple:
    """Mount a alone turned -90..90 deg in one move, the meter read back to back; against the
    floor of the step polarisation scan of mount a alone over the same span."""
    from daqbridge.plans import fly_polarization
    from daqbridge.sim.elliptec import MOTION_OVERHEAD_S, ElliptecBusSimulator

    name, lo, hi = "a", -90.0, 90.0
    address = lab.mounts[name]
    bus = lab.simulator(BUS)
    start = bus.position_deg(address)
    wall, cpu, messages, lines = rec.run(
        fly_polarization(lab[f"{BUS}_{name}"], lab[METER], lo, hi, velocity=FLY_TURN_VELOCITY_PCT)
    )
    scratch = ElliptecBusSimulator(speed=math.inf, addresses=[address])
    po = Reply(BUS, _reply_bytes(scratch, f"{address}gp"))
    speed = bus.max_speed_deg_s * FLY_TURN_VELOCITY_PCT / 100.0
    # No public accessor of a mount's velocity %: read the simulator's own mount state.
    own = bus.max_speed_deg_s * bus._mount(address).velocity_pct / 100.0  # noqa: SLF001
    to_start = bus.real_delay(abs(lo - start) / own + MOTION_OVERHEAD_S) if start != lo else 0.0
    turn = bus.real_delay((hi - lo) / speed + MOTION_OVERHEAD_S)
    floor = Floor([Point(move_s=to_start, completion=[po]), Point(move_s=turn, completion=[po])])
    angles = _linspace(lo, hi, sizes.angles)
    readings = rec.readings(f"{METER}_power")
    per_angle = (
        [readings[int(i * len(readings) / len(angles))] for i in range(len(angles))]
        if readings
        else []
    )
    step = polarization_floor(lab, angles, per_angle, {address: start}, addresses=[address])
    times = sorted(ts[f"{METER}_power"] for ts in rec.timestamps)
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    median_gap = gaps[len(gaps) // 2] if gaps else math.nan
    fly = {
        "velocity": float(FLY_TURN_VELOCITY_PCT),
        "run_up": 0.0,
        "samples": len(rec.events),
        "median_sample_interval_ms": median_gap * 1e3,
        "one_sample_travel": speed * median_gap,
    }
    return wall, cpu, messages, lines, floor, step.total(lab.bauds), fly


FLY_VELOCITY = {"fly-0.1mm": None, "fly-1mm": None, "fly-1mm-10mm/s": 10.0}
"""Row velocity of each fly experiment (None: the axis's own, the profile's 5 mm/s)."""


def _fly_experiment(name: str, lab: Lab, rec: Recorder, sizes: Sizes) -> tuple:
    """A fly raster over the grid of the step raster of the same step; its floor, the step
    raster's floor (readings: the fly's own, one per grid point, for the D? reply lengths) and
    the recorded positions against the simulator's trajectory."""
    from daqbridge.plans import fly_raster

    n = sizes.raster
    step = 0.1 if name == "fly-0.1mm" else 1.0
    half = step * (n - 1) / 2
    rng = (-half, half, n)
    esp = lab.simulator(STAGE)
    start = {k: esp.axis_position(v) for k, v in lab.stage_axes.items()}
    x, y = lab["sim_stage_x"], lab["sim_stage_y"]
    velocity = FLY_VELOCITY[name]
    offset = time.time() - time.monotonic()  # event times are epoch, the simulator's monotonic
    wall, cpu, messages, lines = rec.run(fly_raster(x, y, lab[METER], rng, rng, velocity=velocity))
    from daqbridge.devices import RowFlyer

    row = RowFlyer(x, lab[METER].power).row(-half, half, velocity)
    floor = fly_floor(lab, rng, rng, row.velocity, row.run_up, start)
    readings = rec.readings(f"{METER}_power")
    per_point = (
        [readings[int(i * len(readings) / (n * n))] for i in range(n * n)] if readings else []
    )
    step_floor = raster_floor(lab, rng, rng, METER, per_point, start).total(lab.bauds)
    x_key = "sim_stage_x"
    axis = lab.stage_axes["x"]
    errors, gaps = [], []
    times = [ts[f"{METER}_power"] for ts in rec.timestamps]
    for data, ts in zip(rec.events, rec.timestamps, strict=True):
        errors.append(abs(data[x_key] - esp.true_position(axis, ts[x_key] - offset)))
    for a, b in zip(times, times[1:], strict=False):
        if 0 < b - a < 1.0:  # within a row
            gaps.append(b - a)
    real_v = row.velocity * esp.speed  # units per real second
    gaps.sort()
    errors.sort()
    median_gap = gaps[len(gaps) // 2] if gaps else math.nan
    fly = {
        "velocity": row.velocity,
        "run_up": row.run_up,
        "samples": len(rec.events),
        "median_sample_interval_ms": median_gap * 1e3,
        "one_sample_travel": real_v * median_gap,
        "median_error": errors[len(errors) // 2] if errors else math.nan,
        "p99_error": errors[int(0.99 * (len(errors) - 1))] if errors else math.nan,
        "max_error": errors[-1] if errors else math.nan,
    }
    return wall, cpu, messages, lines, floor, step_floor, fly


# --- reporting -----------------------------------------------------------------------------------


LEGEND = """
Legend: each RunEngine category is the time from its messages to the next message (the
RunEngine's own cost per message is inside every category; 'moves' above the floor is the poll
cadence and the completion exchanges, 'detectors' above it the reads' I/O and the shadow twin).
Per line: replies and bytes the simulator sent against the floor's (polls during a move overlap
the motion: 'on the wire' is not added to the wall time); lease wait and held are summed over
every holder, background pollers of the legacy stack included, so not all of it is on the
scan's path (the Elliptec bus has its own reader thread and takes no lease per reply). CPU is
the whole process: the in-process simulators and their pty pumps are part of it.
"""


def _fmt_s(seconds: float) -> str:
    return f"{seconds:8.2f} s"


def report(results: list[Result], lab_bauds: dict[str, int], out: TextIO) -> None:
    print(
        f"\n{'experiment':<16} {'points':>6} {'floor':>10} {'wall':>10} {'ratio':>6} "
        f"{'overhead/pt':>12} {'fly/step floor':>15}",
        file=out,
    )
    for r in results:
        floor = r.floor.total(lab_bauds)
        per_point = (r.wall - floor) / r.points * 1e3
        vs_step = "" if r.step_floor is None else f"{r.wall / r.step_floor:15.2f}"
        print(
            f"{r.name:<16} {r.points:>6} {_fmt_s(floor)} {_fmt_s(r.wall)} "
            f"{r.wall / floor:6.2f} {per_point:9.1f} ms {vs_step}",
            file=out,
        )
    for r in results:
        if r.step_floor is None:
            continue
        f = r.fly
        if r.name == "fly-polarization":
            print(
                f"\n{r.name}: mount a alone, one turn at {f['velocity']:g} %; the step scan's "
                f"floor (mount a alone, {r.points} angles) {r.step_floor:.2f} s, fly wall / step "
                f"floor {r.wall / r.step_floor:.2f} (target <= 0.5); {f['samples']:.0f} "
                f"samples, median interval {f['median_sample_interval_ms']:.1f} ms = "
                f"{f['one_sample_travel']:.2f} deg of travel",
                file=out,
            )
            continue
        print(
            f"\n{r.name}: rows at {f['velocity']:g} mm/s (run-up {f['run_up']:.3f} mm each "
            f"side); step raster's floor {r.step_floor:.2f} s, fly wall / step floor "
            f"{r.wall / r.step_floor:.2f} (target <= 0.5); {f['samples']:.0f} samples "
            f"(points per grid point {f['samples'] / r.points:.1f}), median interval "
            f"{f['median_sample_interval_ms']:.1f} ms = {f['one_sample_travel'] * 1e3:.1f} um of "
            f"travel; |position - simulator's truth| median {f['median_error'] * 1e3:.2f} um, "
            f"99 % {f['p99_error'] * 1e3:.2f} um, max {f['max_error'] * 1e3:.2f} um",
            file=out,
        )
    for r in results:
        move_floor, read_floor = r.floor.split(lab_bauds)
        print(f"\n{r.name}: where the {r.wall:.2f} s went (CPU {r.cpu:.2f} s)", file=out)
        share = {
            "moves (set + wait)": move_floor,
            "detectors (trigger + read + wait)": read_floor,
        }
        if r.step_floor is not None:  # a fly floor's points: to a row, the row, to a row, ...
            to_rows = Floor(r.floor.points[0::2]).total(lab_bauds)
            share = {"moves (set + wait)": to_rows, FLY_ROWS: move_floor - to_rows}
        for kind, seconds in sorted(r.messages.items(), key=lambda kv: -kv[1]):
            f = share.get(kind, 0.0)
            print(
                f"  {kind:<48} {seconds:7.2f} s  floor {f:7.2f} s  above {seconds - f:7.2f} s",
                file=out,
            )
        counted = r.floor.replies()
        for line, (before, after) in sorted(r.lines.items()):
            replies = after.replies - before.replies
            nbytes = after.bytes_in - before.bytes_in
            if not replies and line not in counted:
                continue
            floor_n, floor_b = counted.get(line, [0, 0])
            wire = nbytes * 10.0 / lab_bauds[line]
            print(
                f"  line {line:<13} replies {replies:5d} (floor {floor_n:4d})  bytes {nbytes:6d} "
                f"(floor {floor_b:5d}) = {wire:6.2f} s on the wire  lease wait "
                f"{max(0.0, after.wait_total - before.wait_total):6.2f} s  held "
                f"{max(0.0, after.hold_total - before.hold_total):6.2f} s",
                file=out,
            )
    print(LEGEND, file=out)


def _row(name: str, value: float, unit: str, note: str = "") -> dict:
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": None,
        "ratio": None,
        "ok": None,
        "note": note,
    }


def run(
    full: bool | None = None,
    only: Iterable[str] | None = None,
    out: TextIO | None = None,
    stacks: Iterable[str] | None = None,
) -> list[dict]:
    """For each of ``stacks`` (:data:`STACKS`; default ``$DAQBRIDGE_BENCH_STACKS`` or
    ``native``): start the lab at speed 1, run the experiments, print the breakdown; return
    the rows of all, those of a lab other than the native one named with its stacks."""
    if stacks is None:
        stacks = os.environ.get(STACKS_ENV, "native").split(",")
    stacks = [s.strip() for s in stacks if s.strip()]
    unknown = [s for s in stacks if s not in STACKS]
    if unknown or not stacks:
        raise ValueError(f"unknown stacks {unknown}; known: {', '.join(STACKS)}")
    rows: list[dict] = []
    for which in stacks:
        prefix = "" if which == "native" else f"[{which} stacks] "
        for row in _run_lab(full, only, out, which):
            rows.append({**row, "name": prefix + row["name"]})
    return rows


def _run_lab(
    full: bool | None, only: Iterable[str] | None, out: TextIO | None, stacks: str
) -> list[dict]:
    if full is None:
        full = os.environ.get(FULL_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    sizes = FULL if full else QUICK
    names = list(only) if only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; known: {', '.join(EXPERIMENTS)}")
    out = out or sys.stderr
    tmp = tempfile.mkdtemp(prefix="daqbridge-bench-experiments-")
    saved = os.environ.get("DAQBRIDGE_DATA")
    os.environ["DAQBRIDGE_DATA"] = tmp  # the runtime's rule: it overrides data_dir
    results: list[Result] = []
    try:
        t0 = time.perf_counter()
        lab = Lab(tmp, stacks)
        print(f"lab ({stacks} stacks) up in {time.perf_counter() - t0:.1f} s", file=out, flush=True)
        try:
            rec = Recorder(lab)
            # Untimed: the first run of a fresh catalog creates its tables (about a second).
            from bluesky.plans import count

            rec.run(count([lab[METER]]))
            for name in names:
                print(f"  {name} ...", file=out, flush=True)
                results.append(run_experiment(name, lab, rec, sizes))
        finally:
            lab.close()
        bauds = lab.bauds
    finally:
        if saved is None:
            os.environ.pop("DAQBRIDGE_DATA", None)
        else:
            os.environ["DAQBRIDGE_DATA"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{stacks} stacks, {'full' if full else 'quick'} form ({sizes}), {os.cpu_count()} cores, "
        f"load average {load}",
        file=out,
    )
    report(results, bauds, out)
    rows = []
    for r in results:
        floor = r.floor.total(bauds)
        rows += [
            _row(f"{r.name}: floor ({r.points} points)", floor, "s"),
            _row(f"{r.name}: wall", r.wall, "s"),
            _row(f"{r.name}: wall / floor", r.wall / floor, "x"),
            _row(f"{r.name}: overhead per point", (r.wall - floor) / r.points * 1e3, "ms"),
        ]
        if r.step_floor is not None:
            rows.append(_row(f"{r.name}: wall / step scan's floor", r.wall / r.step_floor, "x"))
        if "max_error" in r.fly:
            rows += [
                _row(f"{r.name}: max position error", r.fly["max_error"] * 1e3, "um"),
                _row(f"{r.name}: one sample's travel", r.fly["one_sample_travel"] * 1e3, "um"),
            ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the full-size experiments")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(EXPERIMENTS)}")
    parser.add_argument(
        "--stacks",
        help=f"comma-separated, of: {', '.join(STACKS)} (default: native; see STACKS)",
    )
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    stacks = args.stacks.split(",") if args.stacks else None
    with contextlib.redirect_stderr(sys.stdout):
        run(full=args.full or None, only=only, out=sys.stdout, stacks=stacks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
