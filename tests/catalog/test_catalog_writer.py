"""The crash-safe writer: scans land in the catalog, readable live from another process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from ophyd.sim import det, motor

from daqbridge.catalog import UnknownRun, open_catalog, read_log
from daqbridge.errors import CatalogError


def _collect(RE):
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def test_scan_is_written_and_read_back(shared_catalog, RE):
    RE.subscribe(shared_catalog.writer)
    docs = _collect(RE)
    (uid,) = RE(bp.scan([det], motor, -1, 1, 7))
    shared_catalog.flush(timeout=60)

    events = [doc for name, doc in docs if name == "event"]
    dataset = shared_catalog.client[uid].primary.read()
    np.testing.assert_allclose(dataset["det"].values, [e["data"]["det"] for e in events])
    np.testing.assert_allclose(dataset["motor"].values, [e["data"]["motor"] for e in events])
    stop = shared_catalog.client[uid].metadata["stop"]
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"primary": 7}

    # The log is marked done once the stop document is in the catalog, and holds every document.
    wal = shared_catalog.wal_dir
    assert not (wal / f"{uid}.jsonl").exists()
    logged = read_log(wal / f"{uid}.jsonl.done")
    assert [name for name, _ in logged.documents] == [name for name, _ in docs]
    assert logged.damaged_lines == 0 and not logged.torn_tail


def test_runs_summaries_and_lookup_by_prefix(shared_catalog, RE):
    RE.subscribe(shared_catalog.writer)
    (uid,) = RE(bp.count([det], 3), sample="summary-check")
    shared_catalog.flush(timeout=60)

    newest = shared_catalog.runs(limit=1)
    assert [r.uid for r in newest] == [uid]
    assert newest[0].plan_name == "count"
    assert newest[0].exit_status == "success" and newest[0].events == 3
    assert shared_catalog[uid[:8]].metadata["start"]["sample"] == "summary-check"
    assert uid in shared_catalog
    with pytest.raises(UnknownRun, match="no unique run matches 'fffff0000'"):
        shared_catalog["fffff0000"]
    assert "fffff0000" not in shared_catalog


def test_runs_are_paged_newest_first(data_dir, RE, monkeypatch):
    from daqbridge.catalog import _catalog

    with open_catalog(data_dir) as catalog:
        RE.subscribe(catalog.writer)
        uids = [RE(bp.count([det], 1))[0] for _ in range(3)]
        catalog.flush(timeout=60)
        monkeypatch.setattr(_catalog, "PAGE", 2)  # Tiled's cap is 300; page over 3 runs here
        newest_first = uids[::-1]
        assert [r.uid for r in catalog.runs(limit=3)] == newest_first
        assert [r.uid for r in catalog.runs(limit=5)] == newest_first
        assert [r.uid for r in catalog.runs(limit=2)] == newest_first[:2]
        assert [r.uid for r in catalog.runs(limit=None)] == newest_first


READER = """
import json, sys
from daqbridge.catalog import open_catalog
catalog = open_catalog(sys.argv[1], readonly=True)
run = catalog.client[sys.argv[2]]
metadata = dict(run.metadata)
det = run.primary.read()["det"].values.tolist()
print(json.dumps({"uid": metadata["start"]["uid"], "stopped": "stop" in metadata, "det": det}))
catalog.close()
"""


def test_run_is_readable_from_another_process_while_it_runs(shared_catalog, RE, child_env):
    five_events = threading.Event()
    reader_done = threading.Event()
    seen: dict = {"uid": None, "events": 0}

    def watch(name, doc):
        if name == "start":
            seen["uid"] = doc["uid"]
        elif name == "event":
            seen["events"] += 1
            if seen["events"] == 5:
                five_events.set()

    def plan():
        @bpp.run_decorator(md={"purpose": "live read"})
        def inner():
            for _ in range(5):
                yield from bps.trigger_and_read([det])
            deadline = time.monotonic() + 150
            while not reader_done.is_set() and time.monotonic() < deadline:
                yield from bps.sleep(0.05)
            for _ in range(2):
                yield from bps.trigger_and_read([det])

        return (yield from inner())

    result: dict = {}

    def read_from_another_process():
        try:
            if not five_events.wait(60):
                return
            shared_catalog.flush(timeout=60)
            result["proc"] = subprocess.run(
                [sys.executable, "-c", READER, str(shared_catalog.data_dir), seen["uid"]],
                capture_output=True,
                text=True,
                timeout=120,
                env=child_env,
            )
        finally:
            reader_done.set()

    RE.subscribe(shared_catalog.writer)
    RE.subscribe(watch)
    reader = threading.Thread(target=read_from_another_process)
    reader.start()
    (uid,) = RE(plan())
    reader.join(150)

    proc = result["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = json.loads(proc.stdout.strip().splitlines()[-1])
    assert live["uid"] == uid
    assert live["stopped"] is False
    assert len(live["det"]) == 5

    shared_catalog.flush(timeout=60)
    assert shared_catalog.client[uid].metadata["stop"]["num_events"] == {"primary": 7}


def test_overflowing_queue_replays_the_run_from_its_log(data_dir, RE):
    with open_catalog(data_dir, max_queue=3) as catalog:
        writer = catalog.writer
        gate = threading.Event()
        handle = writer._handle

        def held_back(uid, name, doc):  # the catalog is slow: the worker lags behind the scan
            gate.wait(60)
            handle(uid, name, doc)

        writer._handle = held_back
        RE.subscribe(writer)
        (uid,) = RE(bp.count([det], 20))  # the RunEngine is never blocked by the lagging worker
        gate.set()
        catalog.flush(timeout=60)

        stats = writer.stats
        assert stats.overflowed_runs == 1
        assert stats.runs_repaired == 1
        run = catalog.client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert len(run.primary.read()["det"]) == 20
        assert (catalog.wal_dir / f"{uid}.jsonl.done").exists()


def test_catalog_failure_mid_run_is_repaired_from_the_log(data_dir, RE):
    docs = _collect(RE)
    (uid,) = RE(bp.count([det], 6))  # documents only; fed to the writer by hand below
    with open_catalog(data_dir) as catalog:
        writer = catalog.writer
        for name, doc in docs[:5]:  # start, descriptor, three events
            writer(name, doc)
        catalog.flush(timeout=60)
        catalog.client[uid].delete(recursive=True, external_only=False)  # someone deletes it
        for name, doc in docs[5:]:
            writer(name, doc)
        catalog.flush(timeout=60)

        stats = writer.stats
        assert stats.runs_repaired == 1
        assert any(uid in error for error in stats.errors)
        run = catalog.client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert len(run.primary.read()["det"]) == 6


def test_readonly_catalog_has_no_writer_and_missing_catalog_is_a_clear_error(data_dir, tmp_path):
    with open_catalog(data_dir, readonly=True) as catalog:
        with pytest.raises(CatalogError, match="read-only"):
            _ = catalog.writer
        with pytest.raises(CatalogError, match="read-only"):
            catalog.recover()
    missing = tmp_path / "nowhere"
    with pytest.raises(CatalogError, match="no catalog in"):
        open_catalog(missing, readonly=True)
    assert not missing.exists()  # a failed read-only open leaves nothing behind


def test_closed_writer_refuses_documents(data_dir, RE):
    catalog = open_catalog(data_dir)
    writer = catalog.writer
    catalog.close()
    with pytest.raises(CatalogError, match="writer is closed"):
        writer("start", {"uid": "x", "time": 0.0})
    with pytest.raises(CatalogError, match="closed"):
        catalog.runs()


def test_data_env_overrides_data_dir(data_dir, tmp_path, monkeypatch, RE):
    monkeypatch.setenv("DAQBRIDGE_DATA", str(data_dir))
    elsewhere = tmp_path / "not-used"
    with open_catalog(elsewhere) as catalog:
        assert catalog.data_dir == data_dir
        assert catalog.frames_dir == data_dir / "frames"
        RE.subscribe(catalog.writer)
        (uid,) = RE(bp.count([det], 2))
        catalog.flush(timeout=60)
    assert not elsewhere.exists()
    assert (data_dir / "wal" / f"{uid}.jsonl.done").exists()


def test_unreachable_catalog_is_reported_and_the_run_waits_in_the_log(data_dir, RE):
    catalog = open_catalog(data_dir)
    RE.subscribe(catalog.writer)
    catalog._context.close()  # the in-process Tiled server goes away (as a remote one can)
    (uid,) = RE(bp.count([det], 3))  # the scan itself is unaffected
    with pytest.raises(CatalogError, match=f"could not be written.*{uid}"):
        catalog.flush(timeout=60)
    catalog.close()
    assert (data_dir / "wal" / f"{uid}.jsonl").exists()

    with open_catalog(data_dir) as reopened:  # the next start puts it in
        assert [r.action for r in reopened.recovered] == ["replayed"]
        assert reopened.client[uid].metadata["stop"]["exit_status"] == "success"


EXIT_WITHOUT_CLOSE = """
import sys
from bluesky import RunEngine
import bluesky.plans as bp
from ophyd.sim import det
from daqbridge.catalog import open_catalog
catalog = open_catalog(sys.argv[1])
RE = RunEngine({}, context_managers=[])
RE.subscribe(catalog.writer)
(uid,) = RE(bp.count([det], 4))
print(uid)
# no flush, no close: leaving the interpreter must still finish the run in the catalog
"""


def test_leaving_the_interpreter_without_close_finishes_the_run(data_dir, child_env):
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    uid = proc.stdout.strip().splitlines()[-1]
    assert (data_dir / "wal" / f"{uid}.jsonl.done").exists(), proc.stderr[-3000:]
    with open_catalog(data_dir, readonly=True) as catalog:  # no recovery involved
        assert catalog.client[uid].metadata["stop"]["num_events"] == {"primary": 4}
