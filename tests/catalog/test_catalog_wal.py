"""The write-ahead log on its own: routing, encoding, locking, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daqbridge.catalog import WriteAheadLog, read_log
from daqbridge.catalog._wal import claim
from daqbridge.errors import CatalogError

START = {"uid": "run-1", "time": 1.0, "sample": Path("/data/s1"), "tags": {"b", "a"}}
DESCRIPTOR = {"uid": "desc-1", "run_start": "run-1", "name": "primary", "time": 1.1}


def _event(seq: int) -> dict:
    return {
        "uid": f"ev-{seq}",
        "descriptor": "desc-1",
        "seq_num": seq,
        "time": 1.0 + seq,
        "data": {"image": np.arange(6, dtype="uint16").reshape(2, 3)[:, ::2], "x": np.float64(seq)},
        "timestamps": {"image": 1.0, "x": 1.0},
    }


def test_documents_are_routed_to_their_run_and_read_back(tmp_path):
    log = WriteAheadLog(tmp_path)
    assert log.append("start", START) == "run-1"
    assert log.append("descriptor", DESCRIPTOR) == "run-1"
    assert log.append("event", _event(1)) == "run-1"
    assert log.append("event", {**_event(2), "descriptor": "unknown"}) is None
    assert log.unrouted == 1
    assert log.append("stop", {"uid": "stop-1", "run_start": "run-1", "time": 3.0}) == "run-1"
    log.close()

    contents = read_log(tmp_path / "run-1.jsonl")
    assert [name for name, _ in contents.documents] == ["start", "descriptor", "event", "stop"]
    assert contents.start["sample"] == "/data/s1" and contents.start["tags"] == ["a", "b"]
    event = contents.documents[2][1]
    assert event["data"]["image"] == [[0, 2], [3, 5]]  # a non-contiguous numpy view
    assert event["data"]["x"] == 1.0


def test_same_run_uid_twice_is_refused(tmp_path):
    log = WriteAheadLog(tmp_path)
    log.append("start", START)
    with pytest.raises(CatalogError, match="started twice"):
        log.append("start", START)
    log.close()


def test_a_live_log_is_locked_until_released(tmp_path):
    log = WriteAheadLog(tmp_path)
    log.append("start", START)
    with claim(tmp_path / "run-1.jsonl") as owned:
        assert owned is False
    log.release("run-1")
    with claim(tmp_path / "run-1.jsonl") as owned:
        assert owned is True
    assert not list(tmp_path.glob(".*.creating"))


def test_unwritable_log_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "wal"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(CatalogError, match="cannot create the write-ahead log directory"):
        WriteAheadLog(blocker)
