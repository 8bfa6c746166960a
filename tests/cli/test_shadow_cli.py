"""``daqbridge shadow`` through the real CLI (issue 18 item 4, issue 15): the id is checked on
the profile before the lab starts, ``$DAQBRIDGE_PROFILE`` is honoured, ``--field`` is checked
against both drivers before any reading, a bus id compares every mount, and "could not compare"
has its own exit status."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from daqbridge.catalog import DATA_ENV
from daqbridge.cli import main
from tests.cli.conftest import fresh_data_dir

# The documented exit statuses (docs/shadow.md), spelled out so a renamed constant cannot hide
# a changed contract.
EXIT_AGREE, EXIT_USAGE, EXIT_NOT_COMPARED = 0, 2, 3

METER = """
[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "shadow"
port = "sim://newport1830c?name=shadow-cli-{tag}"
polling_rate_hz = 0
sim = { options = { noise = 0.0, input_power = 1e-6 } }
"""

ROTATORS = """
[[instruments]]
id = "rotators"
driver = "elliptec"
stack = "shadow"
port = "pty"
sim = { addresses = [2, 3] }

[instruments.elliptec]
addresses = [
    { address = "2", name = "a" },
    { address = "3", name = "b" },
]
"""

UNPLUGGED = """
[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "shadow"
port = "/dev/serial/by-id/usb-daqbridge-test-no-such-adapter-{tag}"
"""


def _profile(tmp_path: Path, data: Path, *entries: str) -> str:
    tag = uuid.uuid4().hex[:8]
    head = f'[lab]\nname = "shadow cli lab"\ndata_dir = "{data}"\n\n'
    head += "[simulation]\nenabled = true\nspeed = 100.0\n"
    path = tmp_path / "lab.toml"
    path.write_text(head + "".join(e.replace("{tag}", tag) for e in entries))
    return str(path)


@pytest.fixture(autouse=True)
def _no_inherited_lab(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)


@pytest.fixture
def data(cli_catalog_template, tmp_path) -> Path:
    return fresh_data_dir(cli_catalog_template, tmp_path / "data")


def test_an_unknown_id_suggests_the_close_one_without_starting_the_lab(tmp_path, capsys):
    never = tmp_path / "never-created"  # the runtime creates the data directory on start
    code = main(["shadow", "meterr", "--profile", _profile(tmp_path, never, METER)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "did you mean 'meter'?" in err
    assert not never.exists()


def test_the_profile_comes_from_DAQBRIDGE_PROFILE(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("DAQBRIDGE_PROFILE", _profile(tmp_path, data, METER))
    code = main(["shadow", "meter", "-n", "2"])
    out = capsys.readouterr().out
    assert code == EXIT_AGREE, out
    assert "shadow comparison of meter: AGREE" in out


def test_a_lab_that_cannot_start_exits_3_could_not_compare(tmp_path, data, capsys):
    code = main(["shadow", "meter", "--profile", _profile(tmp_path, data, UNPLUGGED)])
    err = capsys.readouterr().err
    assert code == EXIT_NOT_COMPARED, err
    assert "could not compare" in err and "usb-daqbridge-test-no-such-adapter" in err


def test_a_field_one_side_does_not_read_names_both_sides_fields(tmp_path, data, capsys):
    profile = _profile(tmp_path, data, METER)
    code = main(["shadow", "meter", "--profile", profile, "--field", "wavelength", "-n", "2"])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE, captured.err
    assert "'meter' reads ['power'], 'meter_legacy' reads ['power']" in captured.err
    assert "pairs compared" not in captured.out  # checked before any reading


def test_a_bus_id_compares_every_mount(tmp_path, data, capsys):
    profile = _profile(tmp_path, data, ROTATORS)
    code = main(["shadow", "rotators", "--profile", profile, "-n", "2", "--tolerance", "0.05"])
    out = capsys.readouterr().out
    assert code == EXIT_AGREE, out
    assert "shadow comparison of rotators_a: AGREE" in out
    assert "shadow comparison of rotators_b: AGREE" in out


def test_a_bus_compares_each_mounts_angle_not_only_the_fields_both_name_alike(
    tmp_path, data, capsys
):
    # Once both stacks key a mount alike (rot_a_setpoint / rot_a_legacy_setpoint), the shared
    # channel names alone left out the angle itself, keyed by the device's own name.
    profile = _profile(tmp_path, data, ROTATORS)
    main(["shadow", "rotators", "--profile", profile, "-n", "1", "--tolerance", "0.05"])
    out = capsys.readouterr().out
    for mount in ("rotators_a", "rotators_b"):
        assert f"native {mount}  vs  legacy {mount}_legacy" in out, out
