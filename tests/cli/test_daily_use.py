"""Daily use as a Bluesky scientist expects it, through the real ``daqbridge`` command.

Every process here gets a fresh HOME and no DAQBRIDGE_DATA / DAQBRIDGE_PROFILE, so the data
directory comes from the profile alone, as on a scientist's account: ``daqbridge run`` and the
``daqbridge catalog`` commands must meet in the same place, and scan ids must go on counting
from one process to the next.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from .conftest import Cli, child_env, daqbridge_argv, fresh_data_dir

pytestmark = pytest.mark.ci_short


def home_env(home: Path, **extra: str) -> dict[str, str]:
    env = child_env(None, HOME=str(home), **extra)
    env.pop("XDG_DATA_HOME", None)
    return env


def daqbridge(home: Path, *args: str, **extra: str) -> tuple[int, str, str]:
    return Cli(daqbridge_argv(*args), home_env(home, **extra), cwd=home).result()


@pytest.fixture(scope="module")
def two_runs(cli_catalog_template, tmp_path_factory):
    """Two ``daqbridge run count`` with the embedded simulated lab, one after the other, in a
    fresh HOME whose ``~/daqbridge-data/sim`` (the simulated lab's lab.data_dir) holds an
    empty catalog. Returns (home, [uid of the first run, uid of the second])."""
    home = tmp_path_factory.mktemp("home")
    fresh_data_dir(cli_catalog_template, home / "daqbridge-data" / "sim")
    uids = []
    for _ in range(2):
        code, out, err = daqbridge(home, "run", "count", "sim_meter", "num=3")
        assert code == 0, err
        uids.append(re.search(r"^uid: (\S+)$", out, re.M).group(1))
    return home, uids


def test_catalog_list_finds_what_run_wrote_without_options(two_runs):
    home, uids = two_runs
    code, out, err = daqbridge(home, "catalog", "list")
    assert code == 0, err
    assert all(uid[:8] in out for uid in uids)


def test_no_catalog_names_the_path_searched_and_the_command_that_fixes_it(tmp_path):
    code, _, err = daqbridge(tmp_path, "catalog", "list")
    assert code == 1
    assert f"there is no catalog in {tmp_path / 'daqbridge-data' / 'sim'}" in err
    assert "`daqbridge run count sim_meter`" in err
    assert "Traceback" not in err


def test_catalog_commands_take_the_profile_from_the_environment(tmp_path):
    profile = tmp_path / "lab.toml"
    profile.write_text('[lab]\nname = "bench 3"\ndata_dir = "bench3-data"\n')
    code, _, err = daqbridge(tmp_path, "catalog", "list", DAQBRIDGE_PROFILE=str(profile))
    assert code == 1
    assert f"there is no catalog in {tmp_path / 'bench3-data'}" in err
    assert f"profile {profile}" in err


def sim_data(home: Path) -> tuple[str, str]:
    """``--data`` naming where the runs are, so a test about something else does not depend on
    the catalog commands finding the profile's data directory by themselves."""
    return ("--data", str(home / "daqbridge-data" / "sim"))


def test_scan_ids_go_on_counting_across_processes(two_runs):
    home, (first, second) = two_runs
    code, out, err = daqbridge(home, "catalog", "list", *sim_data(home))
    assert code == 0, err
    scan_of = {row.split()[1]: row.split()[0] for row in out.splitlines()[1:]}
    assert scan_of == {first[:8]: "1", second[:8]: "2"}


def test_catalog_show_n_is_scan_n_and_negative_counts_from_the_newest(two_runs):
    home, (first, second) = two_runs
    shown = {}
    for key in ("1", "2", "-1", "-2"):
        code, out, err = daqbridge(home, "catalog", "show", key, *sim_data(home))
        assert code == 0, err
        shown[key] = re.search(r"^run (\S+)$", out, re.M).group(1)
    assert shown == {"1": first, "2": second, "-1": second, "-2": first}


def test_show_values_prints_the_events(two_runs):
    home, _ = two_runs
    code, out, err = daqbridge(home, "catalog", "show", "1", "--values", *sim_data(home))
    assert code == 0, err
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["seq_num"])
    header = lines[at].split()
    assert header[:2] == ["seq_num", "time"] and "sim_meter_power" in header
    rows = [line.split() for line in lines[at + 1 : at + 4]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", row[1]) for row in rows)
    assert all(float(row[header.index("sim_meter_power")]) > 0 for row in rows)


def test_export_has_seq_num_and_time_and_says_where_it_wrote(two_runs):
    home, (first, _) = two_runs
    target = home / "scan1.csv"
    code, out, err = daqbridge(home, "catalog", "export", "1", "-o", str(target), *sim_data(home))
    assert code == 0, err
    assert out.strip() == f"wrote 3 events of stream 'primary' of run {first} to {target}"
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["seq_num"] for r in rows] == ["1", "2", "3"]
    times = [float(r["time"]) for r in rows]
    assert times == sorted(times) and times[0] > 1e9


def test_status_counts_the_catalogs_runs_and_the_last_scan_id(two_runs):
    home, _ = two_runs
    code, out, err = daqbridge(home, "status")
    assert code == 0, err
    assert "catalog holds 2 runs; last scan id 2" in out
