"""``daqbridge run`` with inputs that used to end in a traceback, an endless sleep or gigabytes
allocated (issue 17, items 9 and 10): each is refused from the profile's device ids, before the
lab starts, with one line naming the argument and the limit, and exit status 2.

In-process through the real entry point (``daqbridge.cli.main``). "Nothing ran" is checked on
the data directory: start-up creates it (catalog, write-ahead log) before any simulator or port,
so a data directory that does not exist afterwards means no lab, no run and no command sent.
"""

from __future__ import annotations

import pytest

from daqbridge.catalog import DATA_ENV
from daqbridge.cli import main


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)
    directory = tmp_path / "data"
    monkeypatch.setenv(DATA_ENV, str(directory))
    return directory


def refused(capsys, data_dir, *argv: str) -> str:
    """The one-line refusal of ``daqbridge run ARGV``; fails unless nothing ran."""
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daqbridge run: error: "), err
    assert "starting" not in err and "uid:" not in out
    assert not data_dir.exists()  # the lab never started: no catalog, no simulator, no port
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(
            ("count", "sim_meter", "1", "md=5"), ["count(): md=5", "not a mapping"], id="md=5"
        ),
        pytest.param(
            ("exposure_series", "sim_camera", "5,", "md=1e18"),
            ["exposure_series(): md=1e+18", "not a mapping"],
            id="md=1e18",
        ),
        pytest.param(
            ("count", "sim_meter", "1", "--md", "uid=abc"),
            ["--md['uid']='abc'", "the RunEngine writes itself"],
            id="--md-uid",
        ),
        pytest.param(
            ("count", "sim_meter", "1", "--md", "time=nan"),
            ["--md['time']='nan'", "the RunEngine writes itself"],
            id="--md-time",
        ),
    ],
)
def test_bad_run_metadata_is_refused_before_start_up(capsys, data_dir, argv, words):
    line = refused(capsys, data_dir, *argv)
    for word in words:
        assert word in line, line
    assert "Fix: " in line


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(
            ("count", "sim_meter", "2", "1e308"), ["delay=1e+308", "0 to 86400 s"], id="delay-1e308"
        ),
        pytest.param(
            ("count", "sim_meter", "2", "-1"),
            ["delay=-1", ">= 0", "0 to 86400 s"],
            id="delay-negative",
        ),
        pytest.param(
            ("scan", "sim_stage_x", "0", "1", "1e9", "--detector", "sim_meter"),
            ["1,000,000,000 points", "at most 1,000,000 points, 800 MB"],
            id="scan-1e9",
        ),
    ],
)
def test_unbounded_numbers_are_refused_with_the_limit(capsys, data_dir, argv, words):
    line = refused(capsys, data_dir, *argv)
    for word in words:
        assert word in line, line


def test_a_profile_nested_5000_deep_is_one_message(capsys, data_dir, tmp_path):
    profile = tmp_path / "deep.toml"
    profile.write_text('[lab]\nname = "deep"\nextra = ' + "[" * 5000 + "]" * 5000 + "\n")
    code = main(["run", "count", "sim_meter", "--profile", str(profile)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "RecursionError" not in err
    assert code == 1  # a profile problem: `daqbridge run` exits 1 for those (see _run.py)
    assert f"{profile}:3" in err and "nested more than 16 levels" in err
    assert not data_dir.exists()
