"""Shadow mode: the legacy and the native driver of one instrument read side by side.

Before a lab retires a legacy driver it wants evidence that the native one reads the same
numbers from the same hardware. Shadow mode reads both drivers of one instrument on the same
port, alternately (each exchange inside its own port lease, so their bytes never mix), and
reports how far apart they are, where they disagreed, and what the extra reads cost.

Why it is built this way:

* The comparison is plain data and functions (``compare``, ``ShadowReport``), so the ``shadow``
  CLI, ``ShadowComparison`` (outside a plan), ``shadow_compare_plan`` (inside one, recorded in the
  catalog) and a later ``daqbridge.plans.shadow_compare`` share one definition of "agree".
* Agreement is ``|native - legacy| <= tolerance + rtol * |native|`` (numpy's ``isclose``
  convention); two NaN (both drivers saw an out-of-range reading) agree, one NaN does not.
* The devices are duck-typed ophyd objects (trigger/read/hints); this module imports no driver.
  A native device on ophyd-async reads in coroutines: inside a plan the RunEngine awaits them
  (``ShadowPair`` then answers with coroutines too), outside one (``ShadowComparison``) they run
  on the device's loop (:func:`daqbridge.devices.core.call_sync`).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daqbridge.devices.core import (
    COMPLETED,
    CallTimeout,
    call_sync,
    is_async_device,
    maybe_sync,
)
from daqbridge.errors import (
    CatalogError,
    ConfigError,
    DaqbridgeError,
    InstrumentError,
    InstrumentTimeout,
)

log = logging.getLogger("daqbridge.bridge.shadow")

__all__ = [
    "LEGACY_TWIN",
    "SHADOW_DIFF",
    "SHADOW_PLAN_NAME",
    "Disagreement",
    "ReadFailure",
    "ShadowComparison",
    "ShadowPair",
    "ShadowRecorder",
    "ShadowReport",
    "ShadowRunUnreadable",
    "agree",
    "check_field",
    "compare",
    "main_field",
    "shadow_compare_plan",
    "shadow_summary",
]

SHADOW_PLAN_NAME = "shadow_compare"
LEGACY_TWIN = "_legacy"
"""Suffix of a shadowed device's legacy twin: its data keys are ``<id>_legacy_<field>``."""
SHADOW_DIFF = "_shadow_diff"
"""Infix of the difference keys recorded in shadow: ``<id>_shadow_diff_<field>``."""


# --- the comparison --------------------------------------------------------------------------


def agree(native: float, legacy: float, tolerance: float = 0.0, rtol: float = 0.0) -> bool:
    """Whether two readings of the same quantity agree within ``tolerance + rtol*|native|``."""
    n, lg = float(native), float(legacy)
    if math.isnan(n) or math.isnan(lg):
        return math.isnan(n) and math.isnan(lg)
    return abs(n - lg) <= tolerance + rtol * abs(n)


def _difference(native: float, legacy: float) -> float:
    n, lg = float(native), float(legacy)
    if math.isnan(n) and math.isnan(lg):
        return 0.0
    return n - lg


def _both(a: Any, b: Any, combine: Any) -> Any:
    """``combine(a, b)``; when either is awaitable (an ophyd-async device's ``read()``), a
    coroutine that awaits them first (the RunEngine awaits it)."""
    if not (inspect.isawaitable(a) or inspect.isawaitable(b)):
        return combine(a, b)

    async def later() -> Any:
        x = await a if inspect.isawaitable(a) else a
        y = await b if inspect.isawaitable(b) else b
        return combine(x, y)

    return later()


async def _finished(status: Any) -> None:
    """Wait for an ophyd-async status (awaitable) or an ophyd v1 one (its callback) on the loop;
    raise what failed it."""
    if inspect.isawaitable(status):
        await status
        return
    import asyncio

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished(st: Any) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    status.add_callback(finished)
    await done
    if not status.success:
        raise status.exception() or InstrumentError("the trigger failed.")


def _is_async(device: Any) -> bool:
    """An ophyd-async device, or anything reading in coroutines like one (a wrapper of one)."""
    return is_async_device(device) or inspect.iscoroutinefunction(getattr(device, "read", None))


def describe_keys(device: Any) -> list[str]:
    """The data keys ``device`` reads, without a wire exchange and without awaiting.

    For an ophyd-async StandardReadable these are the names of its readable signals (known
    since construction): inside a plan, on the RunEngine's own loop, ``describe()`` cannot be
    awaited synchronously.
    """
    if is_async_device(device):
        from ophyd_async.core import SignalR

        if isinstance(device, SignalR):
            return [device.name]
        funcs = getattr(device, "_describe_funcs", None)
        owners = [getattr(f, "__self__", None) for f in funcs or ()]
        if funcs is not None and all(is_async_device(o) for o in owners):
            # a part that is a device (the laser's wavelength positioner): its own keys
            return [key for owner in owners for key in describe_keys(owner)]
    described = device.describe()
    if inspect.isawaitable(described):
        return list(maybe_sync(described, device=device))
    return list(described)


@dataclass(frozen=True)
class Disagreement:
    """One pair of readings further apart than the tolerance."""

    index: int
    native: float
    legacy: float
    difference: float  # native - legacy


@dataclass(frozen=True)
class ReadFailure:
    """A reading that could not be taken (the driver's error message)."""

    index: int
    side: str  # "native" or "legacy"
    message: str


@dataclass
class ShadowReport:
    """Result of comparing ``n`` pairs of readings of one instrument by its two drivers.

    Time cost: ``native_read_s`` / ``legacy_read_s`` are the mean durations of one
    trigger-and-read of each driver, and ``time_ratio`` is (native + legacy) / native: how much
    longer reading the instrument takes when the legacy twin is read as well. ``None`` where the
    readings were not timed separately (inside a plan they share one trigger).
    """

    instrument: str
    native_field: str
    legacy_field: str
    tolerance: float
    rtol: float
    native_values: list[float] = field(default_factory=list)
    legacy_values: list[float] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    failures: list[ReadFailure] = field(default_factory=list)
    native_read_s: float | None = None
    legacy_read_s: float | None = None
    run_uid: str | None = None

    @property
    def n(self) -> int:
        """Pairs compared (both readings taken)."""
        return len(self.native_values)

    @property
    def differences(self) -> list[float]:
        return [
            _difference(a, b) for a, b in zip(self.native_values, self.legacy_values, strict=True)
        ]

    @property
    def mean_difference(self) -> float:
        d = self.differences
        return sum(d) / len(d) if d else math.nan

    @property
    def mean_abs_difference(self) -> float:
        d = self.differences
        return sum(abs(x) for x in d) / len(d) if d else math.nan

    @property
    def max_abs_difference(self) -> float:
        d = self.differences
        return max(abs(x) for x in d) if d else math.nan

    @property
    def time_ratio(self) -> float | None:
        if not self.native_read_s or self.legacy_read_s is None:
            return None
        return (self.native_read_s + self.legacy_read_s) / self.native_read_s

    @property
    def ok(self) -> bool:
        """Every pair read and within tolerance (and at least one pair)."""
        return self.n > 0 and not self.disagreements and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "native_field": self.native_field,
            "legacy_field": self.legacy_field,
            "n": self.n,
            "tolerance": self.tolerance,
            "rtol": self.rtol,
            "mean_difference": self.mean_difference,
            "mean_abs_difference": self.mean_abs_difference,
            "max_abs_difference": self.max_abs_difference,
            "disagreements": [vars(d) for d in self.disagreements],
            "failures": [vars(f) for f in self.failures],
            "native_read_s": self.native_read_s,
            "legacy_read_s": self.legacy_read_s,
            "time_ratio": self.time_ratio,
            "run_uid": self.run_uid,
            "ok": self.ok,
        }

    def format(self, max_rows: int = 20) -> str:
        """A text table for the terminal."""
        verdict = "AGREE" if self.ok else ("NO DATA" if self.n == 0 else "DISAGREE")
        lines = [
            f"shadow comparison of {self.instrument}: {verdict}",
            f"  native {self.native_field}  vs  legacy {self.legacy_field}",
            f"  tolerance {self.tolerance:g} + {self.rtol:g} x |native|",
            "",
            f"  {'pairs compared':<22}{self.n}",
            f"  {'mean difference':<22}{self.mean_difference:.6g}",
            f"  {'mean |difference|':<22}{self.mean_abs_difference:.6g}",
            f"  {'max |difference|':<22}{self.max_abs_difference:.6g}",
            f"  {'disagreements':<22}{len(self.disagreements)}",
            f"  {'failed reads':<22}{len(self.failures)}",
        ]
        if self.native_read_s is not None:
            lines.append(f"  {'native read':<22}{self.native_read_s * 1e3:.3f} ms")
        if self.legacy_read_s is not None:
            lines.append(f"  {'legacy read':<22}{self.legacy_read_s * 1e3:.3f} ms")
        if self.time_ratio is not None:
            lines.append(f"  {'time ratio (n+l)/n':<22}{self.time_ratio:.3f}")
        if self.run_uid:
            lines.append(f"  {'run':<22}{self.run_uid}")
        if self.disagreements:
            lines += ["", f"  {'#':>5}  {'native':>14}  {'legacy':>14}  {'difference':>14}"]
            for d in self.disagreements[:max_rows]:
                lines.append(
                    f"  {d.index:>5}  {d.native:>14.6g}  {d.legacy:>14.6g}  {d.difference:>14.6g}"
                )
            if len(self.disagreements) > max_rows:
                lines.append(f"  ... {len(self.disagreements) - max_rows} more")
        if self.failures:
            lines += ["", "  failed reads:"]
            for f in self.failures[:max_rows]:
                lines.append(f"  {f.index:>5}  {f.side:<7} {f.message}")
            if len(self.failures) > max_rows:
                lines.append(f"  ... {len(self.failures) - max_rows} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    # --- from recorded data -------------------------------------------------------------

    @classmethod
    def from_documents(
        cls, documents: Iterable[tuple[str, Mapping[str, Any]]], **overrides: Any
    ) -> ShadowReport:
        """The report of a ``shadow_compare_plan`` run, from its documents."""
        start: Mapping[str, Any] | None = None
        primary: set[str] = set()
        events: list[Mapping[str, Any]] = []
        for name, doc in documents:
            if name == "start":
                start = doc
            elif name == "descriptor" and doc.get("name") == "primary":
                primary.add(doc["uid"])
            elif name == "event" and doc.get("descriptor") in primary:
                events.append(doc)
            elif name == "event_page" and doc.get("descriptor") in primary:
                for i, seq in enumerate(doc["seq_num"]):
                    events.append(
                        {"seq_num": seq, "data": {k: v[i] for k, v in doc["data"].items()}}
                    )
        if start is None:
            raise ConfigError(
                "no start document among the documents given.",
                fix="pass every document of one shadow_compare_plan run.",
            )
        rows = sorted(events, key=lambda e: e["seq_num"])
        return cls._from_rows(start, [e["data"] for e in rows], **overrides)

    @classmethod
    def from_run(cls, run: Any, **overrides: Any) -> ShadowReport:
        """The report of a ``shadow_compare_plan`` run read back from the catalog."""
        start = dict(run.metadata.get("start") or {})
        nf, lf = _compared_fields(start, overrides)
        try:
            stream = run["primary"]
        except KeyError:
            # a run that stopped before its first pair (a driver that failed at start)
            raise ShadowRunUnreadable(
                f"run {start.get('uid')} recorded no readings (no 'primary' stream), so "
                f"{nf!r} and {lf!r} cannot be compared.",
                instrument=_instrument(start, overrides, nf),
                fix="compare a run that recorded at least one pair of readings.",
            ) from None
        data = stream.read()
        _require_fields(start, overrides, (nf, lf), sorted(map(str, data.data_vars)))
        native, legacy = list(data[nf].values), list(data[lf].values)
        rows = [{nf: a, lf: b} for a, b in zip(native, legacy, strict=True)]
        return cls._from_rows(start, rows, **overrides)

    @classmethod
    def _from_rows(
        cls, start: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], **overrides: Any
    ) -> ShadowReport:
        shadow = {**(start.get("shadow") or {}), **overrides}
        nf, lf = _compared_fields(start, overrides)
        lacking = [f for f in (nf, lf) if any(f not in r for r in rows)]
        if lacking:
            _require_fields(start, overrides, lacking, sorted({k for r in rows for k in r}))
        report = compare(
            [r[nf] for r in rows],
            [r[lf] for r in rows],
            tolerance=float(shadow.get("tolerance", 0.0)),
            rtol=float(shadow.get("rtol", 0.0)),
            instrument=_instrument(start, overrides, nf),
            native_field=nf,
            legacy_field=lf,
        )
        report.run_uid = start.get("uid")
        return report


class ShadowRunUnreadable(CatalogError):
    """A recorded run that cannot be compared again: it lacks a field it (or the caller) names,
    or recorded no readings. The data is as recorded; what to fix is the field named."""

    exit_status = 3
    """The CLI's status for it: ``daqbridge shadow``'s "could not compare" (no verdict); the
    default 1 would say the drivers disagreed."""


def _compared_fields(start: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[str, str]:
    """The (native, legacy) data keys a recorded run compares, or the caller's instead."""
    shadow = {**(start.get("shadow") or {}), **overrides}
    nf, lf = shadow.get("native_field"), shadow.get("legacy_field")
    if not nf or not lf:
        raise ConfigError(
            f"run {start.get('uid')} was not made by shadow_compare_plan (no 'shadow' "
            "metadata naming the fields).",
            fix="give the uid of a shadow run, or pass native_field= and legacy_field=.",
        )
    return str(nf), str(lf)


def _instrument(start: Mapping[str, Any], overrides: Mapping[str, Any], nf: str) -> str:
    return str({**(start.get("shadow") or {}), **overrides}.get("instrument", nf))


def _require_fields(
    start: Mapping[str, Any],
    overrides: Mapping[str, Any],
    named: Sequence[str],
    recorded: Sequence[str],
) -> None:
    """Refuse, naming the run, the field and what the run has, when a named field is missing:
    a bare KeyError said none of that (issue 18)."""
    missing = [f for f in named if f not in recorded]
    if not missing:
        return
    asked = [f"{k}=" for k in ("native_field", "legacy_field") if overrides.get(k) in missing]
    by = f"asked for with {' and '.join(asked)}" if asked else "named in its shadow metadata"
    raise ShadowRunUnreadable(
        f"run {start.get('uid')} has no field {', '.join(map(repr, missing))} ({by}); "
        f"it recorded: {', '.join(recorded) or 'nothing'}.",
        instrument=_instrument(start, overrides, named[0]),
        fix="pass native_field= and legacy_field= naming two of the fields it recorded, or "
        "give the uid of a shadow_compare run.",
    )


def compare(
    native_values: Sequence[float],
    legacy_values: Sequence[float],
    *,
    tolerance: float = 0.0,
    rtol: float = 0.0,
    instrument: str = "",
    native_field: str = "native",
    legacy_field: str = "legacy",
) -> ShadowReport:
    """Compare paired readings; the i-th native reading with the i-th legacy reading."""
    if len(native_values) != len(legacy_values):
        raise ValueError(
            f"{len(native_values)} native and {len(legacy_values)} legacy readings: not paired"
        )
    _check_tolerances(tolerance, rtol)
    report = ShadowReport(instrument, native_field, legacy_field, float(tolerance), float(rtol))
    for i, (a, b) in enumerate(zip(native_values, legacy_values, strict=True)):
        report.native_values.append(float(a))
        report.legacy_values.append(float(b))
        if not agree(a, b, tolerance, rtol):
            report.disagreements.append(Disagreement(i, float(a), float(b), _difference(a, b)))
    return report


def _check_tolerances(tolerance: Any, rtol: Any) -> None:
    for what, v in (("tolerance", tolerance), ("rtol", rtol)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or math.isinf(v):
            raise ConfigError(
                f"{what} must be a finite number >= 0, got {v!r}.",
                key=what,
                fix="e.g. --tolerance 1e-9 (absolute, in the reading's units) --rtol 0.001.",
            )


def main_field(device: Any) -> str:
    """The data key a comparison uses: the device's first hinted field, else its only one."""
    if not callable(getattr(device, "describe", None)):
        raise ConfigError(
            f"{getattr(device, 'name', device)!r} is not a readable device (a bus or controller "
            "holding several devices), so there is no single reading to compare.",
            fix="compare one of its devices, e.g. in Python: "
            "ShadowComparison(runtime['sim_rotators_a'], runtime['sim_rotators_a_legacy']).",
        )
    hints = getattr(device, "hints", None) or {}
    fields = list(hints.get("fields") or [])
    if fields:
        return fields[0]
    keys = describe_keys(device)
    if len(keys) == 1:
        return keys[0]
    raise ConfigError(
        f"{getattr(device, 'name', device)!r} reads {keys} and hints none: which to compare?",
        fix="pass native_field= / legacy_field= explicitly.",
    )


def check_field(device: Any, key: str) -> str:
    """``key`` if ``device`` reads it; a ConfigError naming what it does read otherwise (a
    KeyError in the middle of a comparison told nobody which side lacked what)."""
    keys = describe_keys(device)
    if key not in keys:
        name = getattr(device, "name", device)
        raise ConfigError(
            f"{name!r} reads no {key!r}; it reads {keys}.",
            key="field",
            fix=f"compare one of the fields {name!r} reads (--field / native_field= / "
            "legacy_field=).",
        )
    return key


def reading_of(side: str, device: Any, reading: Mapping[str, Any], key: str) -> Any:
    """``reading[key]``, or an error naming the side, the device and what it did read.

    ``check_field`` holds what a device describes; a driver whose ``read()`` then lacks the
    field (a channel that stopped publishing) made the comparison fail with a bare KeyError.
    """
    try:
        return reading[key]
    except KeyError:
        name = getattr(device, "name", device)
        raise InstrumentError(
            f"the {side} device {name!r} describes {key!r} but its reading has no such field "
            f"(it has {sorted(reading)}): this pair could not be compared.",
            instrument=str(name),
            fix=f"check that the {side} driver still publishes {key!r}; compare another field "
            "with --field / native_field= / legacy_field=.",
        ) from None


# --- outside a plan ----------------------------------------------------------------------------


class ShadowComparison:
    """Read the native and the legacy device of one instrument ``n`` times each, alternately
    (native first on even pairs, legacy first on odd ones, so neither always reads the older
    light), and compare. Blocking: use it from a script or the CLI, not inside a plan (there,
    use ``shadow_compare_plan``)."""

    def __init__(
        self,
        native_device: Any,
        legacy_device: Any,
        *,
        tolerance: float = 0.0,
        rtol: float = 0.0,
        native_field: str | None = None,
        legacy_field: str | None = None,
        instrument: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        _check_tolerances(tolerance, rtol)
        self.native = native_device
        self.legacy = legacy_device
        self.tolerance = float(tolerance)
        self.rtol = float(rtol)
        self.native_field = check_field(native_device, native_field or main_field(native_device))
        self.legacy_field = check_field(legacy_device, legacy_field or main_field(legacy_device))
        self.instrument = instrument or getattr(native_device, "name", "instrument")
        self.timeout = timeout

    def _read(self, side: str, device: Any, key: str) -> tuple[float, float]:
        if _is_async(device):
            return self._read_async(side, device, key)
        t0 = time.perf_counter()
        status = device.trigger()
        try:
            status.wait(self.timeout)
        except TimeoutError:
            raise InstrumentTimeout(
                f"no reading within {self.timeout:g} s",
                instrument=getattr(device, "name", None),
                fix="check the instrument answers; raise the comparison's timeout.",
            ) from None
        value = reading_of(side, device, device.read(), key)["value"]
        return float(value), time.perf_counter() - t0

    def _read_async(self, side: str, device: Any, key: str) -> tuple[float, float]:
        """An ophyd-async device: trigger and read on its own loop, this thread waiting."""
        t0 = time.perf_counter()

        async def trigger_and_read() -> Any:
            trigger = getattr(device, "trigger", None)
            if callable(trigger):
                await trigger()
            return await device.read()

        try:
            reading = call_sync(trigger_and_read, device=device, timeout=self.timeout)
        except CallTimeout:
            raise InstrumentTimeout(
                f"no reading within {self.timeout:g} s",
                instrument=getattr(device, "name", None),
                fix="check the instrument answers; raise the comparison's timeout.",
            ) from None
        value = reading_of(side, device, reading, key)["value"]
        return float(value), time.perf_counter() - t0

    def run(self, n: int) -> ShadowReport:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(
                f"the number of readings must be an integer >= 1, got {n!r}.",
                key="n",
                fix="e.g. -n 20.",
            )
        report = ShadowReport(
            self.instrument, self.native_field, self.legacy_field, self.tolerance, self.rtol
        )
        native_t: list[float] = []
        legacy_t: list[float] = []
        sides = (
            ("native", self.native, self.native_field, native_t),
            ("legacy", self.legacy, self.legacy_field, legacy_t),
        )
        for i in range(n):
            values: dict[str, float] = {}
            for side, device, key, times in sides if i % 2 == 0 else sides[::-1]:
                try:
                    values[side], dt = self._read(side, device, key)
                except Exception as exc:  # a failed read is a finding, not a crash
                    report.failures.append(ReadFailure(i, side, _message(exc)))
                    continue
                times.append(dt)
            if len(values) == 2:
                a, b = values["native"], values["legacy"]
                report.native_values.append(a)
                report.legacy_values.append(b)
                if not agree(a, b, self.tolerance, self.rtol):
                    report.disagreements.append(Disagreement(i, a, b, _difference(a, b)))
        report.native_read_s = sum(native_t) / len(native_t) if native_t else None
        report.legacy_read_s = sum(legacy_t) / len(legacy_t) if legacy_t else None
        return report


def _message(exc: BaseException) -> str:
    inner = getattr(exc, "__cause__", None) or exc
    # bluesky's FailedStatus / ophyd's status wrap the driver's error: show the driver's words
    for candidate in (exc, inner, *getattr(exc, "args", ())):
        if isinstance(candidate, DaqbridgeError):
            return str(candidate)
    return f"{type(exc).__name__}: {exc}"


# --- inside a plan -----------------------------------------------------------------------------


class ShadowPair:
    """The native device and its legacy twin as ONE readable: one trigger starts both reads,
    one read returns both readings and ``<native>_minus_<legacy>``.

    Why: bluesky charges every device of a plan a trigger, a wait and a read message per point
    (about as much as the fastest serial exchange); put in a plan as two devices, the legacy twin
    would cost that too. As one object, the legacy read overlaps the native one (the port lease
    keeps their bytes apart) and the only added cost is its own wire time.
    """

    def __init__(
        self,
        native_device: Any,
        legacy_device: Any,
        *,
        name: str | None = None,
        native_field: str | None = None,
        legacy_field: str | None = None,
    ) -> None:
        self.native = native_device
        self.legacy = legacy_device
        self.name = name or f"{native_device.name}_shadow"
        self.parent = None
        self.native_field = check_field(native_device, native_field or main_field(native_device))
        self.legacy_field = check_field(legacy_device, legacy_field or main_field(legacy_device))
        self.difference_field = f"{native_device.name}_minus_{legacy_device.name}"

    def trigger(self) -> Any:
        if not (_is_async(self.native) or _is_async(self.legacy)):
            return self.native.trigger() & self.legacy.trigger()
        from ophyd_async.core import AsyncStatus

        # Both started before either is waited for: the reads overlap as in ophyd v1. A wire
        # detector has no trigger (its read asks the instrument): only the other side starts.
        statuses = [
            device.trigger()
            for device in (self.legacy, self.native)
            if callable(getattr(device, "trigger", None))
        ]

        async def both() -> None:
            for status in statuses:
                await _finished(status)

        return AsyncStatus(both())

    def read(self) -> Any:
        return _both(self.native.read(), self.legacy.read(), self._combine_readings)

    def _combine_readings(
        self, native: dict[str, Any], legacy: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        a = reading_of("native", self.native, native, self.native_field)
        b = reading_of("legacy", self.legacy, legacy, self.legacy_field)
        diff = {
            "value": _difference(a["value"], b["value"]),
            "timestamp": max(a["timestamp"], b["timestamp"]),
        }
        return {**native, **legacy, self.difference_field: diff}

    def describe(self) -> Any:
        return _both(self.native.describe(), self.legacy.describe(), self._combine_descriptions)

    def _combine_descriptions(
        self, native: dict[str, Any], legacy: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        entry: dict[str, Any] = {
            "source": f"shadow:{self.native_field}-{self.legacy_field}",
            "dtype": "number",
            "shape": [],
        }
        units = native[self.native_field].get("units")
        if units:
            entry["units"] = units
        return {**native, **legacy, self.difference_field: entry}

    def read_configuration(self) -> Any:
        return _both(
            self.native.read_configuration(),
            self.legacy.read_configuration(),
            lambda a, b: {**a, **b},
        )

    def describe_configuration(self) -> Any:
        return _both(
            self.native.describe_configuration(),
            self.legacy.describe_configuration(),
            lambda a, b: {**a, **b},
        )

    @property
    def hints(self) -> dict[str, list[str]]:
        return {"fields": [self.native_field, self.legacy_field, self.difference_field]}

    def stage(self) -> Any:
        return self._stage_both("stage", (self.native, self.legacy))

    def unstage(self) -> Any:
        return self._stage_both("unstage", (self.legacy, self.native))

    def _stage_both(self, method: str, devices: tuple[Any, Any]) -> Any:
        if not any(_is_async(d) for d in devices):
            return [*_call(devices[0], method), *_call(devices[1], method)]
        from ophyd_async.core import AsyncStatus

        # ophyd-async stages with a status (called on the loop); ophyd v1 returns a list.
        results = [getattr(d, method, lambda: None)() for d in devices]

        async def staged() -> None:
            for result in results:
                if inspect.isawaitable(result):
                    await result

        return AsyncStatus(staged())

    def __repr__(self) -> str:
        return f"ShadowPair({self.native.name!r}, {self.legacy.name!r})"


def _call(device: Any, method: str) -> list[Any]:
    fn = getattr(device, method, None)
    return list(fn() or []) if callable(fn) else []


def shadow_compare_plan(
    legacy_device: Any,
    native_device: Any,
    num: int,
    tolerance: float = 0.0,
    *,
    rtol: float = 0.0,
    native_field: str | None = None,
    legacy_field: str | None = None,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, ShadowReport]:
    """A run of ``num`` events, each with both readings and ``<native>_minus_<legacy>``.

    Both drivers are read in one trigger (a ``ShadowPair``), so the legacy read adds only its own
    wire time to each point. Returns the ``ShadowReport`` (``RE(plan)`` gives it with
    ``call_returns_result=True``; otherwise rebuild it from the run with
    ``ShadowReport.from_run``).
    """
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(
            f"num must be an integer >= 1, got {num!r}.", key="num", fix="e.g. num=20."
        )
    _check_tolerances(tolerance, rtol)
    pair = ShadowPair(
        native_device, legacy_device, native_field=native_field, legacy_field=legacy_field
    )
    nf, lf = pair.native_field, pair.legacy_field
    shadow_md = {
        "instrument": native_device.name,
        "native": native_device.name,
        "legacy": legacy_device.name,
        "native_field": nf,
        "legacy_field": lf,
        "difference_field": pair.difference_field,
        "tolerance": float(tolerance),
        "rtol": float(rtol),
    }
    run_md = {
        "plan_name": SHADOW_PLAN_NAME,
        "plan_args": {
            "legacy_device": repr(legacy_device),
            "native_device": repr(native_device),
            "num": num,
            "tolerance": tolerance,
            "rtol": rtol,
        },
        "detectors": [native_device.name, legacy_device.name],
        "num_points": num,
        "num_intervals": num - 1,
        "hints": {"dimensions": [(["time"], "primary")]},
        "shadow": shadow_md,
        **dict(md or {}),
    }
    native_values: list[float] = []
    legacy_values: list[float] = []

    @bpp.stage_decorator([pair])
    @bpp.run_decorator(md=run_md)
    def inner() -> Generator[Any, Any, None]:
        for _ in range(num):
            readings = yield from bps.trigger_and_read([pair])
            native_values.append(float(readings[nf]["value"]))
            legacy_values.append(float(readings[lf]["value"]))

    uid = yield from inner()
    report = compare(
        native_values,
        legacy_values,
        tolerance=tolerance,
        rtol=rtol,
        instrument=native_device.name,
        native_field=nf,
        legacy_field=lf,
    )
    report.run_uid = uid if isinstance(uid, str) else None
    return report


def shadow_summary(report: ShadowReport) -> str:
    """One line for logs and exit messages."""
    if report.ok:
        return f"{report.instrument}: {report.n} pairs agree"
    return (
        f"{report.instrument}: {len(report.disagreements)} of {report.n} pairs disagree beyond "
        f"{report.tolerance:g} + {report.rtol:g}x, {len(report.failures)} reads failed"
    )


# --- inside every run ---------------------------------------------------------------------------


def shadow_fields(
    native_name: str,
    twin_name: str,
    native_keys: Iterable[str],
    twin_keys: Iterable[str],
    native_main: str | None = None,
    twin_main: str | None = None,
) -> list[tuple[str, str, str]]:
    """(native key, twin key, difference key) of every quantity both drivers read.

    Keys pair by field (``meter_power`` with ``meter_legacy_power``); the two main fields pair
    whatever they are called, because the stacks name a mount's angle differently (``rot_c``
    and ``rot_c_legacy_position_8``).
    """
    twin_keys = list(twin_keys)
    pairs: list[tuple[str, str, str]] = []
    for key in native_keys:
        if not key.startswith(native_name) or commanded(key):
            continue
        suffix = key[len(native_name) :]
        twin_key = twin_name + suffix
        if twin_key not in twin_keys:
            if key != native_main or twin_main not in twin_keys:
                continue
            twin_key = twin_main
        pairs.append((key, twin_key, f"{native_name}{SHADOW_DIFF}{suffix}"))
    return pairs


def commanded(key: str) -> bool:
    """A setpoint: what a driver was last told, not what the instrument reports.

    In shadow only the native device is commanded; the twin's setpoint is whatever the legacy
    driver was told before (stale by construction), so recording it, or its difference from the
    native one, would record values the instrument was never given.
    """
    return key.endswith("_setpoint")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _ShadowDifference:
    """The differences native - legacy of one shadowed device at the current point, as a
    readable the RunEngine reads into the same event (units from the native description)."""

    def __init__(self, native: Any, twin: Any) -> None:
        self.native = native
        self.twin = twin
        self.name = f"{native.name}{SHADOW_DIFF}"
        self.parent = None
        self.pairs: list[tuple[str, str, str]] | None = None
        self._reading: dict[str, dict[str, Any]] = {}

    def at_point(self, native: Mapping[str, Any], twin: Mapping[str, Any]) -> None:
        if self.pairs is None:
            # Fixed at the first point, so every event of a descriptor has the same keys.
            self.pairs = [
                p
                for p in shadow_fields(
                    self.native.name,
                    self.twin.name,
                    native,
                    twin,
                    _first_hint(self.native),
                    _first_hint(self.twin),
                )
                if _is_number(native[p[0]]["value"]) and _is_number(twin[p[1]]["value"])
            ]
        self._reading = {}
        for nk, tk, dk in self.pairs:
            a, b = native.get(nk), twin.get(tk)
            value = _difference(a["value"], b["value"]) if a and b else math.nan
            stamp = max(a["timestamp"], b["timestamp"]) if a and b else time.time()
            self._reading[dk] = {"value": value, "timestamp": stamp}

    def read(self) -> dict[str, dict[str, Any]]:
        return dict(self._reading)

    def describe(self) -> Any:
        try:
            native = self.native.describe()
        except Exception:  # noqa: BLE001 - units are a courtesy; the keys must not fail
            native = {}
        if inspect.isawaitable(native):  # an ophyd-async native device: the RunEngine awaits

            async def later() -> dict[str, dict[str, Any]]:
                try:
                    described = await native
                except Exception:  # noqa: BLE001 - as above
                    described = {}
                return self._described(described)

            return later()
        return self._described(native)

    def _described(self, native: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for nk, tk, dk in self.pairs or []:
            entry: dict[str, Any] = {
                "source": f"shadow:{nk}-{tk}",
                "dtype": "number",
                "shape": [],
                "dtype_numpy": "<f8",
            }
            units = native.get(nk, {}).get("units") if isinstance(native, dict) else None
            if units:
                entry["units"] = units
            out[dk] = entry
        return out

    def read_configuration(self) -> dict[str, dict[str, Any]]:
        return {}

    def describe_configuration(self) -> dict[str, dict[str, Any]]:
        return {}


def _first_hint(device: Any) -> str | None:
    fields = (getattr(device, "hints", None) or {}).get("fields") or []
    return fields[0] if fields else None


class _TwinEcho:
    """The legacy twin as read at the current point, under the twin's own name and keys.

    The recorder reads the twin itself (after its trigger finished) and hands the reading over
    here; when the twin's trigger failed, every number is NaN, never the twin's older value.
    """

    def __init__(self, twin: Any) -> None:
        self.twin = twin
        self.name = twin.name
        self.parent = None
        self.error: BaseException | None = None
        self.failed = False
        """Whether the twin's trigger at this point failed (its numbers are then NaN)."""

    def trigger(self) -> Any:
        """Trigger the twin; the status returned always succeeds, ``error`` says if the twin
        failed.

        The RunEngine fails the whole run as soon as any status it was given fails, whatever
        group it is in, and calls ``stop()`` on every object a plan touched when it aborts (for
        the legacy adapter: halting the legacy driver mid-exchange). Given only this shield, it
        does neither to the twin: shadow mode observes an experiment and must not end it.
        """
        from ophyd_async.core import AsyncStatus

        self.error = None
        try:
            status = self.twin.trigger()
        except Exception as exc:  # noqa: BLE001 - a finding, recorded as NaN
            self.error = exc
            return COMPLETED

        async def shielded() -> None:
            try:
                await _finished(status)
            except Exception as exc:  # noqa: BLE001 - a finding, recorded as NaN
                self.error = exc

        return AsyncStatus(shielded())

    def read(self) -> Any:
        """The twin's reading at this point (an ophyd-async twin's read is awaited by the
        RunEngine); when its trigger failed every number is NaN, never its older value."""
        return _then(self.twin.read(), self._at_point)

    def _at_point(self, got: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        reading = {k: dict(v) for k, v in got.items() if not commanded(k)}
        if self.failed:
            now = time.time()
            for entry in reading.values():
                if _is_number(entry["value"]):
                    entry.update(value=math.nan, timestamp=now)
        return reading

    def describe(self) -> Any:
        return _then(
            self.twin.describe(), lambda d: {k: v for k, v in d.items() if not commanded(k)}
        )

    def read_configuration(self) -> Any:
        return self.twin.read_configuration()

    def describe_configuration(self) -> Any:
        return self.twin.describe_configuration()


def _then(result: Any, then: Callable[[Any], Any]) -> Any:
    """``then(result)``, after the RunEngine awaited ``result`` if it is a coroutine (an
    ophyd-async device's read or describe)."""
    if inspect.isawaitable(result):

        async def later() -> Any:
            return then(await result)

        return later()
    return then(result)


@dataclass
class _Point:
    """What one plan did since its last event: twins triggered (by the plan, or by the recorder
    in a group of its own), devices read."""

    triggered: set[int] = field(default_factory=set)
    groups: dict[int, str] = field(default_factory=dict)
    readings: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    natives_read: list[Any] = field(default_factory=list)

    def moved(self) -> None:
        self.triggered.clear()
        self.groups.clear()

    def next(self) -> None:
        self.moved()
        self.readings.clear()
        self.natives_read.clear()


class ShadowRecorder:
    """RunEngine preprocessor: every event that reads a shadowed native device also carries its
    legacy twin's reading (``<id>_legacy_<field>``) and the differences
    (``<id>_shadow_diff_<field>``), so a lab's real experiments are the migration's evidence.

    Why a preprocessor: the lab's plans, the native devices and their keys stay exactly as they
    are; only the messages change. The twin is triggered together with the native device; a
    point that read the native device without that (a motor's read-back after a move) triggers
    the twin before the event is saved, so a legacy value is never older than its point. A plan
    that reads the twin itself keeps its own reading; only the differences are added.

    The twin runs in a group of its own: shadow mode observes the experiment and must not end
    it. A legacy read that fails (the twin restarting after a lost reply) records NaN for the
    twin and its differences, is logged and counted in ``failures``; the run goes on.
    """

    def __init__(self, pairs: Mapping[Any, Any]) -> None:
        self._twins = {id(n): t for n, t in pairs.items()}
        self._echoes = {id(t): _TwinEcho(t) for t in pairs.values()}
        self._diffs = {id(n): _ShadowDifference(n, t) for n, t in pairs.items()}
        self.failures: list[ReadFailure] = []

    @property
    def shadowed(self) -> list[str]:
        return [d.native.name for d in self._diffs.values()]

    def __call__(self, plan: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        point = _Point()
        reply: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                msg = plan.send(reply) if thrown is None else plan.throw(thrown)
            except StopIteration as done:
                return done.value
            try:
                reply, thrown = (yield from self._handle(msg, point)), None
            except GeneratorExit:
                plan.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - every throw goes on to the plan
                reply, thrown = None, exc

    def _handle(self, msg: Any, point: _Point) -> Generator[Any, Any, Any]:
        command, obj = msg.command, msg.obj
        if command == "trigger" and id(obj) in self._twins:
            status = yield msg
            yield from self._start_twin(self._twins[id(obj)], point)
            return status
        if command == "trigger" and id(obj) in self._echoes:
            point.triggered.add(id(obj))
        elif command == "set":
            point.moved()  # what the twin read before the move is stale
        elif command in ("create", "drop"):
            point.readings.clear()
            point.natives_read.clear()
        elif command == "read" and msg.args:
            # bluesky 1.16 reads a point's devices in one message (Msg("read", *objs)); the
            # recorder needs each object's own reading, so a read that includes a shadowed
            # device is taken one object at a time, as bluesky before 1.16 always did.
            objs = (obj, *msg.args)
            if any(id(o) in self._twins or id(o) in self._echoes for o in objs):
                merged: dict[str, Any] = {}
                for one in objs:
                    merged.update((yield from self._handle(msg._replace(obj=one, args=()), point)))
                return merged
        if command == "read" and (id(obj) in self._twins or id(obj) in self._echoes):
            if id(obj) in self._twins:
                # A native device with no trigger (a wire detector: its read asks the
                # instrument): the twin starts now, so its read overlaps the native one.
                yield from self._start_twin(self._twins[id(obj)], point)
            reading = yield msg
            point.readings[id(obj)] = reading
            if id(obj) in self._twins:
                point.natives_read.append(obj)
            return reading
        if command == "save":
            for native in list(point.natives_read):
                yield from self._add_twin(native, point)
        if command in ("save", "drop"):
            result = yield msg
            point.next()
            return result
        return (yield msg)

    def _start_twin(self, twin: Any, point: _Point) -> Generator[Any, Any, None]:
        """Trigger the twin's echo in a group of its own, once per point."""
        from bluesky.utils import Msg

        if id(twin) not in point.triggered and id(twin) not in point.groups:
            group = f"shadow-{twin.name}-{time.monotonic_ns()}"
            point.groups[id(twin)] = group
            yield Msg("trigger", self._echoes[id(twin)], group=group)

    def _add_twin(self, native: Any, point: _Point) -> Generator[Any, Any, None]:
        from bluesky.utils import Msg

        twin = self._twins[id(native)]
        echo = self._echoes[id(twin)]
        twin_reading = point.readings.get(id(twin))
        group = point.groups.pop(id(twin), None)
        if twin_reading is None and group is None and id(twin) not in point.triggered:
            group = f"shadow-{twin.name}-{time.monotonic_ns()}"
            yield Msg("trigger", echo, group=group)
        if group is not None:
            # Also when the plan read the twin itself: no status outlives its point.
            yield Msg("wait", None, group=group)
            point.triggered.add(id(twin))
            if echo.error is not None:
                self._failed(twin, echo.error)
        if twin_reading is None:
            echo.failed = echo.error is not None and group is not None
            twin_reading = yield Msg("read", echo)
        diff = self._diffs[id(native)]
        diff.at_point(point.readings[id(native)], twin_reading)
        yield Msg("read", diff)

    def _failed(self, twin: Any, exc: BaseException) -> None:
        message = _message(exc)
        self.failures.append(ReadFailure(len(self.failures), "legacy", message))
        log.warning("shadow: the legacy twin %s was not read at this point: %s", twin.name, message)
