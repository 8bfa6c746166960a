"""The soak campaign: random plans on the RunEngine while other threads hammer the same hardware.

Both stacks and every simulated instrument of profiles/sim.toml take part. The RunEngine (the
calling thread) runs random plans: counts, stage scans and rasters, camera exposure series,
polarisation and wavelength scans, shadow comparisons, legacy recordings and bare moves. At the
same time three "manual" threads do what a scientist's other tools do in a real lab: read
devices directly, submit legacy commands, and take leases on the very ports the plans use.

What must hold at the end (checked by the caller with :meth:`Soak.problems`):

* no deadlock: every actor kept beating (the watchdog dumps all stacks otherwise);
* no interleaved traffic: every serial simulator's ``protocol_errors`` is empty, the Elliptec
  bus saw no too-close moves, the SCPI instrument queued no command error;
* every plan and every manual command succeeded (no fault is injected here);
* no lost event: per run and stream, events emitted == events read back from the catalog.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp

from daqbridge import plans as dp
from daqbridge.legacy import Command
from tests.stress import support

PlanFactory = Callable[[random.Random, int], Generator[Any, Any, Any]]


@dataclass
class SoakResult:
    seconds: float
    plans: dict[str, int] = field(default_factory=dict)
    plan_failures: list[str] = field(default_factory=list)
    manual: dict[str, int] = field(default_factory=dict)
    manual_failures: list[str] = field(default_factory=list)
    runs: int = 0
    events: int = 0
    protocol: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stuck_threads: list[str] = field(default_factory=list)
    dropped_measurements: int = 0
    checked_runs: int = 0
    flush_seconds: float = 0.0
    readback_seconds: float = 0.0

    def problems(self) -> list[str]:
        return [
            *(f"plan failed: {p}" for p in self.plan_failures),
            *(f"manual command failed: {p}" for p in self.manual_failures),
            *(f"traffic: {p}" for p in self.protocol),
            *(f"lost events: {p}" for p in self.lost),
            *(f"thread did not stop: {p}" for p in self.stuck_threads),
        ]

    def summary(self) -> list[str]:
        return [
            f"duration {self.seconds:.1f} s, {self.runs} runs, {self.events} events",
            "plans: " + ", ".join(f"{k} {v}" for k, v in sorted(self.plans.items())),
            "manual commands: " + ", ".join(f"{k} {v}" for k, v in sorted(self.manual.items())),
            f"legacy measurements dropped by slow subscribers: {self.dropped_measurements}",
            f"catalog: flush {self.flush_seconds:.1f} s, {self.checked_runs} of {self.runs} runs "
            f"read back in {self.readback_seconds:.1f} s",
            f"problems: {len(self.problems())}",
        ]


class Soak:
    def __init__(
        self,
        rt: Any,
        *,
        seconds: float,
        seed: int,
        max_points: int = 6,
        check_runs: int | None = None,
    ) -> None:
        self.rt = rt
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.max_points = max_points
        self.check_runs = check_runs
        self.D = rt.devices
        self.ledger = support.RunLedger()
        self.watchdog = support.Watchdog(limit=30.0, name="soak")
        self.stop = threading.Event()
        self.result = SoakResult(seconds)
        self._lock = threading.Lock()
        self.scpi = support.ScpiErrorRecorder(rt.simulation.simulators["sim_dmm"])

    # --- the RunEngine's side ---------------------------------------------------------------

    def plan_menu(self) -> dict[str, PlanFactory]:
        D = self.D

        def n(rng: random.Random, low: int = 2) -> int:
            return rng.randint(low, max(low, self.max_points))

        return {
            "count meter+dmm": lambda r, i: bp.count([D["sim_meter"], D["sim_dmm"]], n(r)),
            "count camera+meter": lambda r, i: bp.count([D["sim_camera"], D["sim_meter"]], n(r)),
            "scan stage x": lambda r, i: bp.scan(
                [D["sim_meter"], D["sim_dmm"]],
                D["sim_stage_x"],
                r.uniform(-5, 0),
                r.uniform(0, 5),
                n(r),
            ),
            "raster": lambda r, i: dp.raster(
                D["sim_stage_x"],
                D["sim_stage_y"],
                D["sim_meter"],
                (r.uniform(-3, 0), r.uniform(0, 3), r.randint(2, 3)),
                (r.uniform(-3, 0), r.uniform(0, 3), 2),
            ),
            "polarization": lambda r, i: dp.polarization_scan(
                D["sim_rotators_a"],
                D["sim_meter"],
                sorted(r.uniform(-60, 60) for _ in range(n(r))),
                extra_rotators=[D["sim_rotators_c"]],
                offsets=[r.choice([0.0, 10.0, 20.0])],
            ),
            "wavelength": lambda r, i: dp.wavelength_scan(
                D["sim_laser"], D["sim_meter"], r.uniform(760, 800), r.uniform(800, 840), n(r)
            ),
            "exposure series": lambda r, i: dp.exposure_series(
                D["sim_camera"], [r.choice([2, 5, 10]), r.choice([3, 8])], frames_per_exposure=2
            ),
            "shadow meter": lambda r, i: dp.shadow_compare(
                D["sim_meter_legacy"], D["sim_meter"], n(r)
            ),
            "count legacy": lambda r, i: bp.count([D["sim_meter_legacy"], D["sim_laser"]], n(r)),
            "scan dmm source": lambda r, i: bp.scan(
                [D["sim_dmm"]], D["sim_dmm"].source, -1.0, 1.0, n(r)
            ),
            "list scan rotator b": lambda r, i: bp.list_scan(
                [D["sim_meter"]], D["sim_rotators_b"], [r.uniform(-90, 90) for _ in range(n(r))]
            ),
            "moves": lambda r, i: bps.mv(
                D["sim_stage_y"], r.uniform(-5, 5), D["sim_rotators_b"], r.uniform(-45, 45)
            ),
        }

    def _run_plans(self) -> None:
        menu = self.plan_menu()
        names = sorted(menu)
        RE = self.rt.RE
        deadline = time.monotonic() + self.seconds
        i = 0
        while time.monotonic() < deadline and not self.watchdog.stalls:
            name = names[i % len(names)] if i < len(names) else self.rng.choice(names)
            i += 1
            self.watchdog.beat("RunEngine")
            try:
                RE(menu[name](self.rng, i), campaign_label=name)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                err = support.find_daqbridge_error(exc)
                self.result.plan_failures.append(
                    f"{name}: {type(exc).__name__}: {support.one_line(err or exc, 300)}"
                )
            self.result.plans[name] = self.result.plans.get(name, 0) + 1
        self.watchdog.idle("RunEngine")

    # --- the other threads ------------------------------------------------------------------

    def _actor(self, name: str, operations: list[tuple[str, Callable[[], Any]]]) -> None:
        rng = random.Random(self.rng.random())
        try:
            while not self.stop.is_set():
                label, op = rng.choice(operations)
                self.watchdog.beat(name)
                try:
                    op()
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    with self._lock:
                        self.result.manual_failures.append(
                            f"{name} {label}: {type(exc).__name__}: {support.one_line(exc, 300)}"
                        )
                with self._lock:
                    self.result.manual[label] = self.result.manual.get(label, 0) + 1
                self.stop.wait(rng.uniform(0.005, 0.03))
        finally:
            self.watchdog.idle(name)

    def direct_reads(self) -> list[tuple[str, Callable[[], Any]]]:
        D = self.D

        def trigger(device: Any) -> Callable[[], Any]:
            from daqbridge.devices.core import call_sync, is_async_device

            def op() -> None:
                if is_async_device(device):  # ophyd-async (the 1830-C): on the RunEngine's loop
                    call_sync(device.read, device=device, timeout=10)
                    return
                status = device.trigger()
                status.wait(10)
                device.read()

            return op

        def dmm() -> None:
            from daqbridge.devices.core import call_sync

            device = D["sim_dmm"]  # ophyd-async: asked on the RunEngine's loop
            values = call_sync(lambda: device.read_signals(["voltage"]), device=device, timeout=10)
            assert "voltage" in values, values

        return [
            ("read sim_meter", trigger(D["sim_meter"])),
            ("read sim_rotators_b", trigger(D["sim_rotators_b"])),
            ("read sim_dmm", dmm),
            ("read sim_meter_legacy", trigger(D["sim_meter_legacy"])),
        ]

    def legacy_submits(self) -> list[tuple[str, Callable[[], Any]]]:
        legacy = self.rt.legacy

        def query(instrument: str, parameter: str) -> Callable[[], Any]:
            def op() -> None:
                result = legacy.submit(instrument, Command.query(parameter), timeout=10)
                if not result.ok:
                    raise AssertionError(f"{instrument} {parameter}: {result.message}")

            return op

        return [
            ("legacy meter power", query("sim_meter_legacy", "power")),
            ("legacy meter wavelength", query("sim_meter_legacy", "wavelength")),
            ("legacy laser wavelength", query("sim_laser", "wavelength")),
            ("legacy laser power", query("sim_laser", "power")),
            ("legacy laser shutter", query("sim_laser", "shutter")),
        ]

    def raw_leases(self) -> list[tuple[str, Callable[[], Any]]]:
        rt = self.rt
        stage = support.serial_port_of(rt, "sim_stage")
        meter = support.serial_port_of(rt, "sim_meter")
        laser = support.serial_port_of(rt, "sim_laser")
        bus = rt.devices["sim_rotators"]
        dmm = rt.devices["sim_dmm"]

        def lease_query(port: Any, command: bytes, term: bytes, check: Callable[[str], bool]):
            def op() -> None:
                with port.lease("soak-manual", timeout=10.0) as lease:
                    lease.drain()
                    reply = lease.query(command, term, 2.0).decode("ascii", "replace").strip()
                if not check(reply):
                    raise AssertionError(f"{command!r} -> {reply!r}")

            return op

        def number(text: str) -> bool:
            try:
                float(text)
            except ValueError:
                return False
            return True

        def bus_identity() -> None:
            endpoint = bus.serial_bus.endpoint("3")  # the transport's bus, under the driver
            packet = endpoint.transact(b"3in", expect={"IN"}, timeout=2.0, owner="soak")
            if not packet.startswith(b"3IN"):
                raise AssertionError(f"3in -> {packet!r}")

        def visa_identity() -> None:
            reply = dmm.port.session.query("*IDN?")  # the VISA session, beside the device
            if reply is not None and "DAQBRIDGE-SIM" not in reply:
                raise AssertionError(f"*IDN? -> {reply!r}")

        return [
            ("lease esp300 2TP?", lease_query(stage, b"2TP?\r\n", b"\r\n", number)),
            ("lease 1830-C W?", lease_query(meter, b"W?\n", b"\n", str.isdigit)),
            (
                "lease maitai READ:WAV?",
                lease_query(laser, b"READ:WAV?\n", b"\n", lambda s: s.endswith("nm")),
            ),
            ("bus elliptec 3in", bus_identity),
            ("visa dmm *IDN?", visa_identity),
        ]

    def _runs_to_check(self, records: list[support.RunRecord]) -> list[support.RunRecord]:
        """Every run, or (``check_runs``) the first run of every plan, the last run, a sample.

        Reading a run back costs 0.1-0.4 s on the shared machine, so the short form samples.
        """
        if self.check_runs is None or len(records) <= self.check_runs:
            return records
        chosen: dict[str, support.RunRecord] = {}
        for rec in records:
            chosen.setdefault(f"first {rec.plan_name}", rec)
        chosen["last"] = records[-1]
        picked = {r.uid for r in chosen.values()}
        rest = [r for r in records if r.uid not in picked]
        extra = max(0, self.check_runs - len(picked))
        picked |= {r.uid for r in self.rng.sample(rest, min(extra, len(rest)))}
        return [r for r in records if r.uid in picked]

    # --- the whole campaign -----------------------------------------------------------------

    def run(self) -> SoakResult:
        rt = self.rt
        RE = rt.RE
        token = RE.subscribe(self.ledger)
        self.ledger.listeners.append(lambda *a: self.watchdog.beat("RunEngine"))
        self.watchdog.on_stall.append(self.stop.set)
        self.watchdog.on_stall.append(lambda: support.abort_run_engine(RE, "soak watchdog"))
        actors = [
            ("direct-reads", self.direct_reads()),
            ("legacy-submits", self.legacy_submits()),
            ("raw-leases", self.raw_leases()),
        ]
        threads = [
            threading.Thread(target=self._actor, args=a, name=f"soak-{a[0]}", daemon=True)
            for a in actors
        ]
        self.watchdog.start()
        t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            self._run_plans()
        finally:
            self.stop.set()
            for t in threads:
                t.join(30)
            self.result.stuck_threads = [t.name for t in threads if t.is_alive()]
            self.watchdog.stop()
            RE.unsubscribe(token)
            self.result.seconds = time.monotonic() - t0
        self.scpi.restore()
        self.result.protocol = support.protocol_problems(rt, self.scpi)
        records = [self.ledger.runs[u] for u in self.ledger.order]
        self.result.runs = len(records)
        self.result.events = sum(r.total for r in records)
        for rec in records:
            if rec.exit_status != "success":
                self.result.plan_failures.append(
                    f"run {rec.uid[:8]} ({rec.plan_name}) ended {rec.exit_status}: {rec.reason}"
                )
        t = time.monotonic()
        rt.catalog.flush(timeout=120)
        self.result.flush_seconds = time.monotonic() - t
        checked = self._runs_to_check(records)
        t = time.monotonic()
        self.result.lost = support.compare_with_catalog(rt.catalog, checked)
        self.result.readback_seconds = time.monotonic() - t
        self.result.checked_runs = len(checked)
        status = rt.status()
        self.result.dropped_measurements = int(status.get("legacy", {}).get("dropped", 0) or 0)
        return self.result
