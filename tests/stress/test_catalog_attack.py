"""The catalog under attack (issue 17): short, deterministic forms of the campaign's findings.

* Many short runs faster than the catalog can write them, in a process whose file-descriptor
  limit leaves little headroom: the RunEngine waits for the catalog (back-pressure) instead of
  the writer falling behind without bound, no run aborts, every event lands, and the open logs
  stay bounded. Before, every finished run kept its log open until written and runs aborted on
  "Too many open files".
* N runs left by a crash are recovered by the writer's worker, not on the thread that opens the
  catalog, so a restart does not wait N replays (structural: which thread replays, not how long).
* Opening and closing the embedded catalog frees the in-process Tiled app (object counts).
* A catalog file locked by another process (a real ``BEGIN EXCLUSIVE``) gives a short message
  naming the lock and its holder, never "there is no catalog", never "delete".
* A reader meeting a writer's lock on the event tables waits for it instead of failing.

Timing is never asserted; the speed figures are in ``benchmarks/bench_catalog.py``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd.sim import det

from daqbridge.catalog import WriteAheadLog, _writer, open_catalog
from daqbridge.cli import main
from daqbridge.errors import CatalogError
from tests.stress import support

pytestmark = pytest.mark.ci_short


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAQBRIDGE_DATA"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(support.REPO), *sys.path] if p)
    return env


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# --- back-pressure with a file-descriptor bound --------------------------------------------------

SHORT_RUNS = """
import json, os, resource, sys, warnings
warnings.simplefilter("ignore")
import bluesky.plans as bp
from bluesky import RunEngine
from ophyd.sim import det
from daqbridge.catalog import open_catalog

data, runs, headroom = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
catalog = open_catalog(data)
RE = RunEngine({}, context_managers=[])
RE.subscribe(catalog.writer)
RE(bp.count([det], 1))  # warm up: connection pools, lazy imports
catalog.flush(timeout=300)
baseline = len(os.listdir("/proc/self/fd"))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (baseline + headroom, hard))
peak = {"fds": 0, "logs": 0}

def watch(name, doc):
    peak["fds"] = max(peak["fds"], len(os.listdir("/proc/self/fd")))
    peak["logs"] = max(peak["logs"], len(catalog.writer.wal.open_runs))

RE.subscribe(watch)
uids, failures = [], []
for _ in range(runs):
    try:
        uids.extend(RE(bp.count([det], 3)))
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}"[:300])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the checks below need their own fds
try:
    catalog.flush(timeout=600)
except Exception as exc:
    failures.append(f"flush: {type(exc).__name__}: {exc}"[:300])
stats = catalog.writer.stats
stored = {}
for uid in uids:
    try:
        stored[uid] = len(catalog.client[uid].primary.read()["det"])
    except Exception as exc:
        stored[uid] = f"{type(exc).__name__}: {exc}"[:200]
catalog.close()
print(json.dumps({
    "baseline": baseline, "peak_fds": peak["fds"], "peak_logs": peak["logs"],
    "failures": failures, "uids": uids, "stored": stored,
    "waits": getattr(stats, "backpressure_waits", None),
    "max_behind": getattr(stats, "max_runs_behind", None),
    "errors": stats.errors,
}))
"""


def test_short_runs_faster_than_the_catalog_wait_for_it_with_bounded_fds(stress_data, tmp_path):
    """24 back-to-back runs of 3 events under an fd limit of (fds after warm-up + 12).

    The RunEngine finishes such a run in ~40 ms, the catalog writes one in ~250 ms of CPU; an
    unbounded writer would hold ~20 logs open here and exceed the limit.
    """
    runs, headroom = 24, 12
    data = stress_data("short-runs")
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_RUNS, str(data), str(runs), str(headroom)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    support.report(
        "catalog under attack: short runs with an fd limit",
        [
            f"{runs} runs, fd limit {result['baseline'] + headroom} (baseline "
            f"{result['baseline']}): peak fds {result['peak_fds']}, peak open logs "
            f"{result['peak_logs']}, start documents that waited {result['waits']}, most "
            f"finished runs waiting {result['max_behind']}"
        ],
    )
    assert result["failures"] == [], f"runs aborted or lost: {result['failures'][:3]}"
    assert len(result["uids"]) == runs
    lost = {uid: n for uid, n in result["stored"].items() if n != 3}
    assert not lost, f"runs without their 3 events in the catalog: {lost}"
    assert result["errors"] == []
    # The open run plus the finished runs back-pressure lets wait.
    assert result["peak_logs"] <= _writer.MAX_RUNS_BEHIND + 1, result


# --- recovery of N pending runs off the opening thread -------------------------------------------


def _crashed_runs(wal_dir: Path, count: int) -> list[str]:
    """Logs of ``count`` runs whose process died before their stop document."""
    RE = RunEngine({}, context_managers=[])
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    uids = []
    for _ in range(count):
        docs.clear()
        RE(bp.count([det], 2))
        log = WriteAheadLog(wal_dir)
        for name, doc in docs[:-1]:
            log.append(name, doc)
        log.close()
        uids.append(docs[0][1]["uid"])
    return uids


def test_pending_runs_are_recovered_by_the_writer_not_by_the_opener(stress_data, caplog):
    data = stress_data("pending")
    uids = _crashed_runs(data / "wal", 5)
    caplog.set_level(logging.WARNING, logger="daqbridge.catalog")
    with open_catalog(data, background_recovery=True) as catalog:
        opener = threading.current_thread().name
        catalog.flush(timeout=300)  # waits for the background recovery too
        recovered = {r.uid: r for r in catalog.recovered}
        assert sorted(recovered) == sorted(uids)
        assert {r.exit_status for r in recovered.values()} == {"fail"}
        for uid in uids:
            assert catalog.client[uid].metadata["stop"]["exit_status"] == "fail"
        assert not list(catalog.wal_dir.glob("*.jsonl"))
    replayed_on = {r.threadName for r in caplog.records if "recovered run" in r.getMessage()}
    assert replayed_on == {"daqbridge-catalog-writer"}, (
        f"runs replayed on {replayed_on}; the opener was {opener}"
    )


# --- memory per open/close ---------------------------------------------------------------------

OBJECTS_PER_CYCLE = 1_000
"""Allowed growth of live objects per open/close, averaged over the measured cycles. Before the
fix a cycle left about 61,000 (the whole in-process FastAPI app); after it, about 1."""


def test_open_close_cycles_free_the_in_process_app(stress_data):
    data = stress_data("open-close")

    def cycle() -> None:
        open_catalog(data).close()

    for _ in range(2):  # first opens create process-wide pools and caches
        cycle()
    gc.collect()
    before = len(gc.get_objects())
    cycles = 4
    for _ in range(cycles):
        cycle()
    gc.collect()
    growth = (len(gc.get_objects()) - before) / cycles
    support.report("catalog under attack: open/close", [f"live objects per cycle: {growth:+.0f}"])
    assert growth <= OBJECTS_PER_CYCLE, f"{growth:.0f} objects left per open/close"


# --- a catalog locked by another process --------------------------------------------------------

LOCK_HOLDER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # holds the lock until the test closes our stdin
"""


class LockHolder:
    """A real second process holding ``BEGIN EXCLUSIVE`` on a SQLite file until released."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "locked":
            self.release()
            pytest.fail(f"the lock holder did not lock {path}: {self.proc.stderr.read()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(30)


def _assert_says_locked(text: str, holder: LockHolder, filename: str) -> None:
    assert f"{filename} is locked by process {holder.pid}" in text, text
    assert "no catalog" not in text and "delete" not in text.lower(), text
    assert "Traceback" not in text and len(text) < 600 and text.count("\n") <= 1, text


def test_locked_catalog_is_named_with_its_holder_not_damaged(stress_data):
    data = stress_data("locked-open")
    holder = LockHolder(data / "catalog.db")
    try:
        with pytest.raises(CatalogError) as caught:
            open_catalog(data)
    finally:
        holder.release()
    _assert_says_locked(str(caught.value), holder, "catalog.db")
    assert getattr(caught.value, "pid", None) == holder.pid
    with open_catalog(data) as catalog:  # released: the catalog was never damaged
        assert catalog.runs() == []


def test_catalog_list_says_locked_not_missing(stress_data, capsys):
    data = stress_data("locked-list")
    holder = LockHolder(data / "catalog.db")
    try:
        code = main(["catalog", "list", "--data", str(data)])
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert code == 1
    _assert_says_locked(err, holder, "catalog.db")


# --- reading while another process writes the event tables ---------------------------------------


def _reading_a_table() -> bool:
    """True while some thread executes Tiled's SQL read of a table (the in-process server reads
    on a worker thread of its own): with the lock held, that statement can only be waiting."""
    for frame in list(sys._current_frames().values()):
        executing = frame.f_code.co_name == "execute" and "adbc_driver_manager" in (
            frame.f_code.co_filename
        )
        while executing and frame is not None:
            if frame.f_code.co_filename.endswith(os.path.join("adapters", "sql.py")):
                return True
            frame = frame.f_back
    return False


def test_a_reader_waits_for_a_writers_lock_on_the_event_tables(stress_data):
    data = stress_data("read-while-written")
    with open_catalog(data) as catalog:
        RE = RunEngine({}, context_managers=[])
        RE.subscribe(catalog.writer)
        (uid,) = RE(bp.count([det], 4))
        catalog.flush(timeout=300)
        run = catalog.client[uid]
        outcome: dict = {}

        def read() -> None:
            try:
                outcome["det"] = run.primary.read()["det"].values.tolist()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = "".join(traceback.format_exception_only(exc)).strip()

        holder = LockHolder(data / "storage.sqlite")  # a writer in the middle of a commit
        try:
            reader = threading.Thread(target=read, name="catalog-reader")
            reader.start()
            support.wait_until(lambda: "error" in outcome or _reading_a_table(), 60, 0.005)
            waited = "error" not in outcome and reader.is_alive()
        finally:
            holder.release()
        reader.join(120)
    assert "error" not in outcome, f"the read failed instead of waiting: {outcome['error']}"
    assert waited and len(outcome["det"]) == 4


# --- a read-only data directory ------------------------------------------------------------------


def _read_only_mounts_possible() -> bool:
    if sys.platform != "linux" or not os.path.exists("/usr/bin/unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


needs_read_only_mount = pytest.mark.skipif(
    not _read_only_mounts_possible(),
    reason="needs `unshare --user --map-root-user --mount` for a read-only bind mount",
)


def _run_read_only(directory: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``directory`` bind-mounted read-only (a private mount namespace)."""
    script = f'mount --bind -o ro "{directory}" "{directory}" && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=_child_env(),
    )


READ_ONLY_RUN = """
import json, sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from daqbridge.errors import DaqbridgeError
from daqbridge.catalog import WriteAheadLog, open_catalog

outcomes = {}
try:
    WriteAheadLog(Path(sys.argv[1]) / "wal").append("start", {"uid": "ro-run", "time": 0.0})
    outcomes["log"] = "logged"
except Exception as exc:
    outcomes["log"] = [type(exc).__name__, isinstance(exc, DaqbridgeError), str(exc)]
try:
    open_catalog(sys.argv[1]).close()
    outcomes["open"] = "opened"
except Exception as exc:
    outcomes["open"] = [type(exc).__name__, isinstance(exc, DaqbridgeError), str(exc)]
print(json.dumps(outcomes))
"""


@needs_read_only_mount
def test_read_only_data_directory_gives_catalog_errors_not_os_errors(stress_data):
    data = stress_data("read-only")
    (data / "wal").mkdir()  # as after a first session: the log directory exists
    proc = _run_read_only(data, [sys.executable, "-c", READ_ONLY_RUN, str(data)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = _last_json(proc.stdout)
    name, is_ours, text = outcomes["log"]
    assert (name, is_ours) == ("CatalogError", True), outcomes["log"]
    assert "read-only" in text and "ro-run" in text
    name, is_ours, text = outcomes["open"]
    assert (name, is_ours) == ("CatalogError", True), outcomes["open"]
    assert "read-only" in text and "readonly=True" in text


@needs_read_only_mount
def test_catalog_recover_on_a_read_only_directory_prints_no_sql(stress_data):
    data = stress_data("read-only-recover")
    _crashed_runs(data / "wal", 1)
    cli = "import sys; from daqbridge.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = _run_read_only(
        data, [sys.executable, "-c", cli, "catalog", "recover", "--data", str(data)]
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "read-only" in output, output
    for raw in ("[SQL:", "INSERT", "Traceback", "sqlalche.me"):
        assert raw not in output, output
    assert len(output.strip().splitlines()) <= 2, output


def test_recovery_failures_are_one_line_without_sql(tmp_path):
    """A real SQLAlchemy error (a write to a read-only SQLite database) becomes one line."""
    import sqlalchemy

    from daqbridge.catalog._sqlite import describe

    db = tmp_path / "ro.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.begin() as con:
        con.execute(sqlalchemy.text("CREATE TABLE nodes (key TEXT)"))
    engine.dispose()
    engine = sqlalchemy.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught, engine.begin() as con:
            con.execute(sqlalchemy.text("INSERT INTO nodes VALUES ('a-whole-start-document')"))
    finally:
        engine.dispose()
    assert "[SQL:" in str(caught.value)  # what the user used to see
    text = describe(caught.value)
    assert text == "OperationalError: attempt to write a readonly database"
