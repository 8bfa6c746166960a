"""Start/stop cycles of a whole runtime leak no threads, no file descriptors and no memory.

A lab restarts its runtime many times a day (a new IPython session, a profile change). Each
cycle here starts the simulated lab (both stacks, every instrument, the catalog), runs a camera
count and a legacy reading, and shuts down. Threads are compared by name and fds by target,
before the first measured cycle and after the last, once the process has settled (bounded
wait); memory as the number of live Python objects after a full garbage collection (a count is
exact where RSS is noise, and what leaked before were objects: the in-process Tiled app of every
closed catalog, about 61,000 of them and 8-13 MB per cycle). The first runtime of a process
creates lazy process-wide pools (Tiled, pyvisa, thread executors) that are not leaks, so one
unmeasured cycle runs first unless an earlier test of the session has already started a runtime.

Short form: 1 measured cycle; long form: ``DAQBRIDGE_STRESS_CYCLES`` (default 10).
"""

from __future__ import annotations

import gc
import threading
import uuid
from collections import Counter

import bluesky.plans as bp
import pytest

from daqbridge.legacy import Command
from tests.stress import support

THREAD_TOLERANCE = 0
FD_TOLERANCE = 2
"""Allowed growth over all measured cycles. No thread may stay behind (threads that end late are
waited for, up to 3 s); a couple of fds may (pyvisa/sqlite caches)."""
OBJECTS_PER_CYCLE = 10_000
"""Allowed growth of live objects per cycle. A cycle left about 800 after the catalog's app was
freed (bounded caches of typing and the libraries filling up), about 61,000 more before."""


FORMS = [
    pytest.param(support.Size("short", cycles=1), marks=[pytest.mark.ci_short]),
    pytest.param("long", marks=[pytest.mark.stress]),
]


def _size(form: object) -> support.Size:
    if isinstance(form, support.Size):
        return form
    return support.Size("long", cycles=int(support.env_number("DAQBRIDGE_STRESS_CYCLES", 10)))


def _threads() -> Counter:
    return Counter(_family(t.name) for t in threading.enumerate())


def _family(name: str) -> str:
    """A thread name without its counter: ``ThreadPoolExecutor-3_0`` -> ``ThreadPoolExecutor``."""
    return name.rstrip("0123456789_-").split("-sim-")[0]


def _fds() -> Counter:
    return Counter(_fd_kind(t) for t in support.open_fds().values())


def _fd_kind(target: str) -> str:
    if target.startswith(("socket:", "pipe:", "anon_inode:")):
        return target.split(":")[0]
    return target


def _live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def _growth(before: Counter, after: Counter) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] > before[k]}


def _settled(baseline: Counter, snapshot, tolerance: int, timeout: float = 3.0) -> Counter:
    """The snapshot once it is back within tolerance of the baseline (or after ``timeout``)."""
    current = snapshot()

    def ok() -> bool:
        nonlocal current
        gc.collect()
        current = snapshot()
        return sum(_growth(baseline, current).values()) <= tolerance

    support.wait_until(ok, timeout, 0.1)
    return current


def _cycle(profile_path, data_dir) -> None:
    rt = support.start_runtime(profile_path, data_dir)
    try:
        rt.RE(bp.count([rt.devices["sim_camera"], rt.devices["sim_meter"]], 3))
        result = rt.legacy.submit("sim_laser", Command.query("wavelength"), timeout=10)
        assert result.ok, result.message
    finally:
        report = rt.close(reason="leak cycle")
    assert report.clean, report.format()


@pytest.mark.parametrize("form", FORMS, ids=["short", "long"])
def test_runtime_cycles_leak_no_threads_fds_or_memory(stress_data, tmp_path, form):
    size = _size(form)
    profile = tmp_path / "leaks.toml"
    profile.write_text(support.lab_profile_text(uuid.uuid4().hex[:6]))
    # One cycle not counted, whatever ran before in this process: what lives as long as the
    # process starts on first use (thread pools, the legacy adapter's one deadline thread), and
    # an earlier test may have started runtimes without using all of it (seen: the deadline
    # thread counted as a leak when other stress tests ran first).
    _cycle(profile, stress_data("leak-warmup"))
    data_dirs = [stress_data(f"leak-{i}") for i in range(size.cycles)]  # not counted
    gc.collect()
    threads0, fds0 = _threads(), _fds()
    objects0, rss0 = _live_objects(), support.rss_bytes()
    for data_dir in data_dirs:
        _cycle(profile, data_dir)
    threads1 = _settled(threads0, _threads, THREAD_TOLERANCE)
    fds1 = _settled(fds0, _fds, FD_TOLERANCE)
    objects1, rss1 = _live_objects(), support.rss_bytes()
    thread_growth = _growth(threads0, threads1)
    fd_growth = _growth(fds0, fds1)
    object_growth = (objects1 - objects0) / size.cycles
    support.report(
        f"leaks ({size.form}: {size.cycles} start/stop cycles)",
        [
            f"threads {sum(threads0.values())} -> {sum(threads1.values())}, new: "
            f"{thread_growth or 'none'}",
            f"fds {sum(fds0.values())} -> {sum(fds1.values())}, new: {fd_growth or 'none'}",
            f"live objects {objects0} -> {objects1} ({object_growth:+.0f} per cycle), RSS "
            f"{rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB",
        ],
    )
    assert sum(thread_growth.values()) <= THREAD_TOLERANCE, (
        f"threads left behind by {size.cycles} runtime cycles: {thread_growth}"
    )
    assert sum(fd_growth.values()) <= FD_TOLERANCE, (
        f"file descriptors left open by {size.cycles} runtime cycles: {fd_growth}"
    )
    assert object_growth <= OBJECTS_PER_CYCLE, (
        f"{object_growth:.0f} live objects left per runtime cycle"
    )
