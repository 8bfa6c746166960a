"""Recovery from the write-ahead log: kill -9 mid-run, partial runs, torn and foreign logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det

from daqbridge.catalog import WriteAheadLog, open_catalog, read_log

WRITER = """
import sys
from bluesky import RunEngine
import bluesky.plans as bp
from ophyd.sim import det
from daqbridge.catalog import open_catalog
catalog = open_catalog(sys.argv[1], flush_interval=0.2)
RE = RunEngine({}, context_managers=[])
RE.subscribe(catalog.writer)
RE(bp.count([det], num=100000, delay=0.01), sample="killed mid-run")
"""


def _logged_events(path) -> int:
    try:
        return path.read_bytes().count(b'{"name":"event"')
    except FileNotFoundError:
        return 0


def test_kill9_mid_run_is_recovered_incomplete_with_every_logged_event(
    data_dir, child_env, tmp_path
):
    wal = data_dir / "wal"
    errors = tmp_path / "writer.stderr"
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data_dir)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=child_env,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            logs = sorted(wal.glob("*.jsonl")) if wal.is_dir() else []
            if logs and _logged_events(logs[0]) >= 30:
                break
            if proc.poll() is not None:
                pytest.fail(f"writer process ended early: {errors.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the writer process logged no 30 events within 120 s")
            time.sleep(0.05)
        time.sleep(0.6)  # let batches reach Tiled, so recovery meets a partial run
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    log = read_log(logs[0])
    uid = log.start["uid"]
    logged = [doc for name, doc in log.documents if name == "event"]
    assert log.stop is None and len(logged) >= 30

    with open_catalog(data_dir) as catalog:  # recovery runs on open
        (result,) = catalog.recovered
        assert result.uid == uid
        assert result.action in ("replaced", "replayed")
        assert result.events == len(logged) and not result.had_stop
        assert result.exit_status == "fail"

        run = catalog.client[uid]
        stop = run.metadata["stop"]
        assert stop["exit_status"] == "fail"
        assert stop["reason"] == f"incomplete: recovered after crash ({len(logged)} events)"
        assert stop["num_events"] == {"primary": len(logged)}
        assert run.metadata["start"]["sample"] == "killed mid-run"
        dataset = run.primary.read()
        np.testing.assert_allclose(dataset["det"].values, [e["data"]["det"] for e in logged])
        np.testing.assert_allclose(
            np.sort(dataset["time"].values), [e["time"] for e in logged], rtol=0, atol=1e-6
        )
        assert (wal / f"{uid}.jsonl.done").exists() and not logs[0].exists()
        summary = catalog.runs(1)[0]
        assert summary.uid == uid and summary.exit_status == "fail" and not summary.complete
        assert catalog.recover() == []  # idempotent: nothing left to do


def _count_docs(RE, num=6):
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bp.count([det], num))
    return docs


def _log_run(wal_dir, documents) -> None:
    """Write documents to a log the way a process that then died would have."""
    log = WriteAheadLog(wal_dir)
    for name, doc in documents:
        log.append(name, doc)
    log.close()


def test_partial_run_in_catalog_is_replaced_by_the_whole_log(data_dir, RE):
    docs = _count_docs(RE, 6)
    uid = docs[0][1]["uid"]
    without_stop = [d for d in docs if d[0] != "stop"]
    with open_catalog(data_dir, recover=False) as catalog:
        partial = TiledWriter(catalog.client, batch_size=2)
        for name, doc in without_stop[:5]:  # start, descriptor, 3 events: 2 reach the catalog
            partial(name, doc)
        assert len(catalog.client[uid].primary.read()["det"]) == 2
        _log_run(catalog.wal_dir, without_stop)

        (result,) = catalog.recover()
        assert result.action == "replaced" and result.events == 6
        run = catalog.client[uid]
        assert len(run.primary.read()["det"]) == 6
        assert run.metadata["stop"]["reason"] == "incomplete: recovered after crash (6 events)"


def test_logged_stop_that_never_reached_the_catalog_is_replayed_as_success(data_dir, RE):
    docs = _count_docs(RE, 4)
    uid = docs[0][1]["uid"]
    with open_catalog(data_dir, recover=False) as catalog:
        _log_run(catalog.wal_dir, docs)
        (result,) = catalog.recover()
        assert (result.action, result.exit_status, result.had_stop) == ("replayed", "success", True)
        assert catalog.client[uid].metadata["stop"]["uid"] == docs[-1][1]["uid"]


def test_run_already_complete_only_marks_the_log_done(data_dir, RE):
    docs = _count_docs(RE, 3)
    uid = docs[0][1]["uid"]
    with open_catalog(data_dir, recover=False) as catalog:
        complete = TiledWriter(catalog.client)
        for name, doc in docs:
            complete(name, doc)
        _log_run(catalog.wal_dir, docs)  # e.g. the rename to .done was lost in a power cut
        (result,) = catalog.recover()
        assert result.action == "already complete"
        assert (catalog.wal_dir / f"{uid}.jsonl.done").exists()
        assert len(catalog.client[uid].primary.read()["det"]) == 3


def test_log_of_a_live_run_is_left_alone(data_dir, RE):
    docs = _count_docs(RE, 2)
    uid = docs[0][1]["uid"]
    with open_catalog(data_dir, recover=False) as catalog:
        live = WriteAheadLog(catalog.wal_dir)  # holds the lock, as a running process does
        for name, doc in docs[:3]:
            live.append(name, doc)
        (result,) = catalog.recover()
        assert result.action == "in progress"
        assert uid not in catalog
        assert (catalog.wal_dir / f"{uid}.jsonl").exists()
        live.close()  # the process ends without a stop: now it is a crashed run
        (result,) = catalog.recover()
        assert result.action == "replayed" and result.events == 1


def test_torn_last_line_and_logs_without_start(data_dir, RE):
    docs = _count_docs(RE, 3)
    uid = docs[0][1]["uid"]
    with open_catalog(data_dir, recover=False) as catalog:
        _log_run(catalog.wal_dir, docs[:-1])
        path = catalog.wal_dir / f"{uid}.jsonl"
        with open(path, "ab") as stream:
            stream.write(b'{"name":"event","doc":{"uid":"cut sho')  # killed mid-write
        orphan = catalog.wal_dir / "orphan.jsonl"
        orphan.write_bytes(b'{"name":"event","doc":{"uid":"e1"}}\n')

        contents = read_log(path)
        assert contents.torn_tail and contents.damaged_lines == 1
        results = {r.log.name.split(".")[0]: r for r in catalog.recover()}
        assert results[uid].action == "replayed" and results[uid].events == 3
        assert "damaged line" in results[uid].note
        assert results["orphan"].action == "unreadable"
        assert (catalog.wal_dir / "orphan.jsonl.bad").exists()
        assert len(catalog.client[uid].primary.read()["det"]) == 3
