"""Crash campaign: kill -9 a runtime while the camera writes, then check what survived.

A child process (tests/stress/crash_child.py) starts the runtime on a small simulated lab (power
meter and camera, native) and runs ``bp.count([sim_camera, sim_meter], N)``, printing every event
after the catalog writer has logged it. The test kills it (SIGKILL) once a random number of
events is in the write-ahead log, plus a random few milliseconds, so the kill lands anywhere: in
a frame write, a log append, a batch write to the catalog. Then:

* every HDF5 file in the frames directory opens with h5py, and the run's file holds at least one
  frame per event the run emitted (a point's frames are flushed before its event exists);
* the catalog, opened again (recovery runs), holds every event the child printed, the run is
  marked incomplete (exit status ``fail``, reason ``incomplete: ...``), and nothing is left to
  recover.

All kills use one data directory, one after the other, as a lab that restarts after each crash:
the next child's runtime recovers the previous run when it opens the catalog, the test recovers
the last one. Short form: 2 kills; long form: ``DAQBRIDGE_STRESS_KILLS`` (default 20).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest

from daqbridge.catalog import open_catalog
from tests.stress import support

CHILD = Path(__file__).with_name("crash_child.py")

PROFILE = """
[lab]
name = "crash campaign"

[simulation]
enabled = true
speed = 20.0

[shutdown]
catalog = 5.0

[[instruments]]
id = "sim_meter"
driver = "newport1830c"
stack = "native"
port = "sim://newport1830c?name=crash_meter"

[instruments.newport1830c]
wavelength_nm = 800
range = 0

[[instruments]]
id = "sim_camera"
driver = "pvcam"
stack = "native"
camera = "PrimeBSI"

[instruments.pvcam]
backend = "sim"
exposure_ms = 5.0
roi = { s1 = 0, s2 = 127, p1 = 0, p2 = 127 }
binning = [1, 1]
"""

FORMS = [
    pytest.param(support.Size("short", kills=2), marks=pytest.mark.ci_short),
    pytest.param("long", marks=pytest.mark.stress),
]


def _size(form: object) -> support.Size:
    if isinstance(form, support.Size):
        return form
    return support.Size("long", kills=int(support.env_number("DAQBRIDGE_STRESS_KILLS", 20)))


def _logged_events(log: Path) -> int:
    try:
        return log.read_bytes().count(b'{"name":"event"')
    except FileNotFoundError:
        return 0


class Child:
    """The child process and what it printed (read on a thread: a full pipe must not block it)."""

    def __init__(self, profile: Path, data: Path, env: dict[str, str], stderr: Path) -> None:
        self.lines: list[str] = []
        self._stderr = open(stderr, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(profile), str(data), "100000"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(support.REPO),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").strip())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(10)
        self._stderr.close()

    @property
    def printed_events(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("EVENT ")]

    @property
    def frame_file(self) -> str | None:
        uris = [line.split()[1] for line in self.lines if line.startswith("RESOURCE ")]
        return Path(uris[-1].split("localhost", 1)[-1]).name if uris else None

    @property
    def uid(self) -> str | None:
        starts = [line.split()[1] for line in self.lines if line.startswith("START ")]
        return starts[-1] if starts else None


def _open_frames(frames: Path) -> dict[str, int]:
    """Frames per HDF5 file; every file must open (plain, as a scientist would, else SWMR)."""
    counts: dict[str, int] = {}
    problems = []
    for path in sorted(frames.rglob("*.h5")):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            problems.append(f"{path.name}: plain h5py.File(path, 'r') fails: {exc}")
            f = h5py.File(path, "r", swmr=True)  # raises if the file is really unreadable
        with f:
            counts[path.name] = int(f["/entry/data/data"].shape[0])
    if problems:
        support.report("crash campaign: HDF5 files needing swmr=True to open", problems)
    return counts


@pytest.mark.parametrize("form", FORMS, ids=["short", "long"])
def test_kill9_during_camera_runs_loses_no_logged_event(stress_data, tmp_path, form):
    size = _size(form)
    seed = support.stress_seed()
    rng = random.Random(seed)
    data = stress_data("crash")
    wal = data / "wal"
    profile = tmp_path / "crash.toml"
    profile.write_text(PROFILE)
    env = {k: v for k, v in os.environ.items() if k != "DAQBRIDGE_DATA"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(support.REPO), *sys.path] if p)
    env["PYTHONUNBUFFERED"] = "1"

    killed: list[tuple[str, list[int], int, str | None]] = []  # uid, printed, target, file
    for k in range(size.kills):
        target = rng.randint(1, 12 if not size.long else 40)
        stderr = tmp_path / f"child{k}.stderr"
        child = Child(profile, data, env, stderr)
        try:
            deadline = time.monotonic() + 120
            # This child's own log: the previous child's was recovered (renamed) by this one.
            while child.uid is None or _logged_events(wal / f"{child.uid}.jsonl") < target:
                if child.proc.poll() is not None:
                    pytest.fail(f"child {k} ended early: {stderr.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"child {k} logged no {target} events within 120 s")
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
        finally:
            child.kill()
        assert child.proc.returncode == -signal.SIGKILL, stderr.read_text()[-3000:]
        assert child.uid is not None, f"child {k} printed no start: {child.lines[:5]}"
        killed.append((child.uid, child.printed_events, target, child.frame_file))

    frames = _open_frames(data / "frames")
    with open_catalog(data) as catalog:  # recovery of the last run runs here
        problems = []
        lines = []
        for uid, printed, target, frame_file in killed:
            run = catalog.client[uid]
            stop = run.metadata.get("stop") or {}
            stored = support.catalog_event_counts(catalog, uid).get("primary", 0)
            seq = set(run["primary"].base["internal"].read(["seq_num"])["seq_num"].tolist())
            missing = sorted(set(printed) - seq)
            lines.append(
                f"run {uid[:8]}: kill after >= {target} logged events; printed {len(printed)}, "
                f"in catalog {stored}; stop {stop.get('exit_status')!r} {stop.get('reason')!r}"
            )
            if printed and frames.get(frame_file or "", 0) < len(printed):
                problems.append(
                    f"run {uid[:8]}: {frames.get(frame_file or '')} frames in {frame_file} < "
                    f"{len(printed)} events emitted"
                )
            if missing:
                problems.append(f"run {uid[:8]}: printed events missing from catalog: {missing}")
            if stored < len(printed):
                problems.append(f"run {uid[:8]}: {stored} events stored < {len(printed)} printed")
            if stop.get("exit_status") != "fail" or "incomplete" not in str(stop.get("reason")):
                problems.append(f"run {uid[:8]}: not marked incomplete: {stop}")
        leftovers = sorted(p.name for p in wal.glob("*.jsonl"))
        if leftovers:
            problems.append(f"logs still waiting for recovery: {leftovers}")
        again = catalog.recover()
        if again:
            problems.append(f"a second recovery still found work: {again}")
    total_frames = sum(frames.values())
    lines.append(f"{len(frames)} HDF5 files open, {total_frames} frames in all")
    support.report(f"crash campaign ({size.form}: {size.kills} kills, seed {seed})", lines)
    assert not problems, "\n".join(problems)
