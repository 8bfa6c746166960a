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
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daqbridge.errors import ConfigError, DaqbridgeError, InstrumentTimeout

__all__ = [
    "SHADOW_PLAN_NAME",
    "Disagreement",
    "ReadFailure",
    "ShadowComparison",
    "ShadowPair",
    "ShadowReport",
    "agree",
    "compare",
    "main_field",
    "shadow_compare_plan",
    "shadow_summary",
]

SHADOW_PLAN_NAME = "shadow_compare"


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
        start = dict(run.metadata["start"])
        data = run["primary"].read()
        shadow = start.get("shadow") or {}
        nf, lf = shadow.get("native_field"), shadow.get("legacy_field")
        if nf not in data or lf not in data:
            raise ConfigError(
                f"run {start.get('uid')} has no fields {nf!r} and {lf!r}: not a shadow run.",
                fix="give the uid of a run made by shadow_compare_plan.",
            )
        native, legacy = list(data[nf].values), list(data[lf].values)
        rows = [{nf: a, lf: b} for a, b in zip(native, legacy, strict=True)]
        return cls._from_rows(start, rows, **overrides)

    @classmethod
    def _from_rows(
        cls, start: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], **overrides: Any
    ) -> ShadowReport:
        shadow = dict(start.get("shadow") or {})
        shadow.update(overrides)
        try:
            nf, lf = shadow["native_field"], shadow["legacy_field"]
        except KeyError:
            raise ConfigError(
                f"run {start.get('uid')} was not made by shadow_compare_plan (no 'shadow' "
                "metadata naming the fields).",
                fix="give the uid of a shadow run, or pass native_field= and legacy_field=.",
            ) from None
        report = compare(
            [r[nf] for r in rows],
            [r[lf] for r in rows],
            tolerance=float(shadow.get("tolerance", 0.0)),
            rtol=float(shadow.get("rtol", 0.0)),
            instrument=str(shadow.get("instrument", nf)),
            native_field=nf,
            legacy_field=lf,
        )
        report.run_uid = start.get("uid")
        return report


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
    keys = list(device.describe())
    if len(keys) == 1:
        return keys[0]
    raise ConfigError(
        f"{getattr(device, 'name', device)!r} reads {keys} and hints none: which to compare?",
        fix="pass native_field= / legacy_field= explicitly.",
    )


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
        self.native_field = native_field or main_field(native_device)
        self.legacy_field = legacy_field or main_field(legacy_device)
        self.instrument = instrument or getattr(native_device, "name", "instrument")
        self.timeout = timeout

    def _read(self, device: Any, key: str) -> tuple[float, float]:
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
        value = device.read()[key]["value"]
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
                    values[side], dt = self._read(device, key)
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
        self.native_field = native_field or main_field(native_device)
        self.legacy_field = legacy_field or main_field(legacy_device)
        self.difference_field = f"{native_device.name}_minus_{legacy_device.name}"

    def trigger(self) -> Any:
        return self.native.trigger() & self.legacy.trigger()

    def read(self) -> dict[str, dict[str, Any]]:
        native, legacy = self.native.read(), self.legacy.read()
        a, b = native[self.native_field], legacy[self.legacy_field]
        diff = {
            "value": _difference(a["value"], b["value"]),
            "timestamp": max(a["timestamp"], b["timestamp"]),
        }
        return {**native, **legacy, self.difference_field: diff}

    def describe(self) -> dict[str, dict[str, Any]]:
        native, legacy = self.native.describe(), self.legacy.describe()
        entry: dict[str, Any] = {
            "source": f"shadow:{self.native_field}-{self.legacy_field}",
            "dtype": "number",
            "shape": [],
        }
        units = native[self.native_field].get("units")
        if units:
            entry["units"] = units
        return {**native, **legacy, self.difference_field: entry}

    def read_configuration(self) -> dict[str, dict[str, Any]]:
        return {**self.native.read_configuration(), **self.legacy.read_configuration()}

    def describe_configuration(self) -> dict[str, dict[str, Any]]:
        return {**self.native.describe_configuration(), **self.legacy.describe_configuration()}

    @property
    def hints(self) -> dict[str, list[str]]:
        return {"fields": [self.native_field, self.legacy_field, self.difference_field]}

    def stage(self) -> list[Any]:
        return [*_call(self.native, "stage"), *_call(self.legacy, "stage")]

    def unstage(self) -> list[Any]:
        return [*_call(self.legacy, "unstage"), *_call(self.native, "unstage")]

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
