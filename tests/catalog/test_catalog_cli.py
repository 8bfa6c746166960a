"""``daqbridge catalog list/show/export/recover`` against a real catalog."""

from __future__ import annotations

import csv
import io

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from daqbridge.catalog import DATA_ENV, WriteAheadLog, open_catalog
from daqbridge.cli import main


@pytest.fixture(scope="module")
def scanned(template_dir, tmp_path_factory):
    """A catalog holding one 5-point scan; returns (data dir, uid, event documents)."""
    import shutil

    directory = tmp_path_factory.mktemp("cli") / "data"
    shutil.copytree(template_dir, directory, ignore=shutil.ignore_patterns("wal"))
    events: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATA_ENV, raising=False)
        with open_catalog(directory) as catalog:
            RE = RunEngine({}, context_managers=[])
            RE.subscribe(catalog.writer)
            RE.subscribe(lambda name, doc: events.append(doc) if name == "event" else None)
            (uid,) = RE(bp.scan([det], motor, -1, 1, 5), operator="cli-test")
            catalog.flush(timeout=60)
    return directory, uid, events


def test_list_shows_the_run(scanned, capsys):
    directory, uid, _ = scanned
    assert main(["catalog", "list", "--limit", "5", "--data", str(directory)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if uid[:8] in row)
    assert "scan" in line and "success" in line and line.rstrip().endswith(" 5")


def test_list_limit_beyond_tiled_page_size(scanned, capsys):
    """Tiled's server refuses pages of more than 300 nodes; the list pages through instead."""
    directory, uid, _ = scanned
    assert main(["catalog", "list", "--limit", "1000", "--data", str(directory)]) == 0
    assert uid[:8] in capsys.readouterr().out


def test_show_by_uid_prefix(scanned, capsys):
    directory, uid, _ = scanned
    assert main(["catalog", "show", uid[:8], "--data", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"run {uid}" in out
    assert "exit status success" in out
    assert "operator: cli-test" in out
    assert "primary: 5 events" in out
    assert "det: number scalar" in out and "motor: number scalar" in out


def test_export_csv_to_file(scanned, tmp_path):
    directory, uid, events = scanned
    target = tmp_path / "scan.csv"
    code = main(
        ["catalog", "export", uid, "--format", "csv", "-o", str(target), "--data", str(directory)]
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert list(rows[0]) == ["seq_num", "time", "det", "motor", "motor_setpoint"]
    assert [r["seq_num"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [float(r["det"]) for r in rows] == pytest.approx([e["data"]["det"] for e in events])
    assert [float(r["motor"]) for r in rows] == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert [float(r["time"]) for r in rows] == pytest.approx([e["time"] for e in events])


def test_export_to_stdout_and_unknown_stream(scanned, capsys):
    directory, uid, _ = scanned
    assert main(["catalog", "export", uid[:10], "--data", str(directory)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "seq_num,time,det,motor,motor_setpoint"
    assert main(["catalog", "export", uid, "--stream", "baseline", "--data", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "has no stream 'baseline'" in err and "streams: primary" in err


def test_unknown_uid_is_a_clear_error(scanned, capsys):
    directory, _, _ = scanned
    assert main(["catalog", "show", "deadbeef00", "--data", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "no unique run matches 'deadbeef00'" in err and "daqbridge catalog list" in err
    assert "Traceback" not in err


def test_missing_catalog_is_a_clear_error(tmp_path, capsys):
    assert main(["catalog", "list", "--data", str(tmp_path / "empty")]) == 1
    assert "there is no catalog in" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_data_env_is_used_without_flag(scanned, monkeypatch, capsys):
    directory, uid, _ = scanned
    monkeypatch.setenv(DATA_ENV, str(directory))
    assert main(["catalog", "list"]) == 0
    assert uid[:8] in capsys.readouterr().out


def test_recover_command(data_dir, capsys):
    RE = RunEngine({}, context_managers=[])
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(bp.count([det], 4))
    log = WriteAheadLog(data_dir / "wal")
    for name, doc in docs[:-1]:  # crashed before its stop document
        log.append(name, doc)
    log.close()

    assert main(["catalog", "recover", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{uid}: replayed, 4 events, exit status fail" in out
    assert main(["catalog", "list", "--data", str(data_dir)]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if uid[:8] in row)
    assert "fail" in line
    assert main(["catalog", "recover", "--data", str(data_dir)]) == 0
    assert "nothing to recover" in capsys.readouterr().out


def test_list_tells_how_to_recover_a_run_that_never_stopped(data_dir, capsys):
    """A run killed with kill -9 has a start and no stop in the catalog: its row says
    ``running?``, and the list says which command ends it."""
    RE = RunEngine({}, context_managers=[])
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(bp.count([det], 2))
    with open_catalog(data_dir) as catalog:
        for name, doc in docs[:-1]:  # the process died before its stop document
            catalog.writer(name, doc)
        catalog.flush(timeout=60)
    assert main(["catalog", "list", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "running?" in next(row for row in out.splitlines() if uid[:8] in row)
    assert f"`DAQBRIDGE_DATA={data_dir} daqbridge catalog recover`" in out
