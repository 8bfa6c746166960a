"""Soak: both stacks, every simulated instrument, random plans and concurrent manual commands;
then per-point overhead and memory over many points. One simulated lab serves both tests.

Soak short form (ci_short): 8 s of plans. Long form (stress): ``DAQBRIDGE_STRESS_SECONDS``
(default 600 s). ``DAQBRIDGE_STRESS_SEED`` replays a campaign (the seed is printed).

Overhead: bp.count of the power meter, run in chunks (one run per chunk) on the simulated lab
(legacy polling and the catalog writer running, as in the lab). Per chunk: the mean time between
consecutive events (run set-up excluded), the process RSS and the number of live Python objects
(tracemalloc's traced memory too in the long form: it slows every allocation down).

This is not a speed test (those are benchmarks, printed, never asserted). It fails only on a
clear growth trend: the last quarter of the chunks at more than 1.5x the per-point time of the
first quarter AND RSS grown beyond a generous bound, or Python memory growing beyond a generous
bound. Short form: 1,000 points in 10 chunks; long form: ``DAQBRIDGE_STRESS_OVERHEAD_POINTS``
(default 10,000) in 20 chunks.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

import bluesky.plans as bp
import pytest

from tests.stress import support
from tests.stress.soak import Soak

FORMS = [
    pytest.param(support.Size("short", seconds=8.0, points=8), marks=pytest.mark.ci_short),
    pytest.param(
        "long",
        marks=pytest.mark.stress,
    ),
]


def _size(form: object) -> support.Size:
    if isinstance(form, support.Size):
        return form
    return support.Size(
        "long",
        seconds=support.env_number("DAQBRIDGE_STRESS_SECONDS", 600.0),
        points=int(support.env_number("DAQBRIDGE_STRESS_POINTS", 12)),
    )


@pytest.mark.parametrize("form", FORMS, ids=["short", "long"])
def test_soak_random_plans_and_manual_commands_on_both_stacks(sim_lab, form):
    size = _size(form)
    seed = support.stress_seed()
    soak = Soak(
        sim_lab,
        seconds=size.seconds,
        seed=seed,
        max_points=size.points,
        check_runs=None if size.long else 13,
    )
    result = soak.run()
    support.report(f"soak ({size.form}, seed {seed})", [*result.summary(), *result.problems()[:40]])
    soak.watchdog.check()
    assert result.runs >= 5, "the soak ran almost no plans"
    assert sum(result.manual.values()) >= 20, "the manual threads did almost nothing"
    problems = result.problems()
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:40])


MB = 1024 * 1024

OVERHEAD_FORMS = [
    pytest.param(support.Size("short", points=1000, repeats=10), marks=pytest.mark.ci_short),
    pytest.param("long", marks=pytest.mark.stress),
]


def _overhead_size(form: object) -> support.Size:
    if isinstance(form, support.Size):
        return form
    return support.Size(
        "long",
        points=int(support.env_number("DAQBRIDGE_STRESS_OVERHEAD_POINTS", 10_000)),
        repeats=20,
    )


def _quarter_means(values: list[float]) -> tuple[float, float]:
    q = max(1, len(values) // 4)
    return statistics.fmean(values[:q]), statistics.fmean(values[-q:])


@pytest.mark.parametrize("form", OVERHEAD_FORMS, ids=["short", "long"])
def test_per_point_overhead_and_memory_do_not_grow(sim_lab, form):
    size = _overhead_size(form)
    chunks = size.repeats
    per_chunk = max(10, size.points // chunks)
    meter = sim_lab.devices["sim_meter"]
    RE = sim_lab.RE
    times: list[float] = []

    def on_event(name: str, doc: dict) -> None:
        if name == "event":
            times.append(doc["time"])

    token = RE.subscribe(on_event)
    rows = []
    trace = size.long
    try:
        RE(bp.count([meter], 20))  # warm-up: first-use costs are not a trend
        if trace:
            tracemalloc.start(1)
        for chunk in range(chunks):
            times.clear()
            t0 = time.perf_counter()
            RE(bp.count([meter], per_chunk))
            wall = time.perf_counter() - t0
            assert len(times) == per_chunk
            step = statistics.fmean(b - a for a, b in zip(times, times[1:], strict=False))
            gc.collect()
            objects = len(gc.get_objects())
            traced = tracemalloc.get_traced_memory()[0] if trace else 0
            rows.append(
                (chunk, step * 1000, wall / per_chunk * 1000, support.rss_bytes(), objects, traced)
            )
    finally:
        if trace:
            tracemalloc.stop()
        RE.unsubscribe(token)

    first, last = _quarter_means([r[1] for r in rows])
    ratio = last / first
    rss_growth = rows[-1][3] - rows[0][3]
    object_growth = rows[-1][4] - rows[0][4]
    traced_growth = rows[-1][5] - rows[0][5]
    lines = ["chunk  ms/point(events)  ms/point(wall)  RSS MB  objects  traced MB"]
    lines += [
        f"{c:5d}  {s:16.3f}  {w:14.3f}  {r / MB:6.1f}  {o:7d}  {t / MB:9.1f}"
        for c, s, w, r, o, t in rows
    ]
    lines.append(
        f"{size.points} points in {chunks} chunks of {per_chunk}: per-point time last/first "
        f"quarter {last:.3f}/{first:.3f} ms = x{ratio:.2f}; RSS {rss_growth / MB:+.1f} MB; "
        f"live objects {object_growth:+d}"
        + (f"; traced {traced_growth / MB:+.1f} MB" if trace else "")
    )
    support.report(f"per-point overhead and memory ({size.form})", lines)

    rss_bound = (200 if size.long else 100) * MB
    assert not (ratio > 1.5 and rss_growth > rss_bound), "\n".join(lines)
    # A leak of one object per point adds 10,000 objects in the long form. In the short form
    # (1,000 points) the lab's bounded queues still filling up (up to 1,000 measurements per
    # legacy subscriber) can add a few thousand live objects in a long test session, so the short
    # form only catches a leak of several objects per point.
    assert object_growth < max(size.points, 5000), "\n".join(lines)
    assert traced_growth < 150 * MB, "\n".join(lines)
