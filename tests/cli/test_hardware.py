"""``daqbridge hardware``: serial ports (a real pseudo-terminal made here) and VISA resources
(pyvisa-sim with the project's SCPI definition), through the real entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import daqbridge.sim
from daqbridge.cli import main

SCPI_YAML = Path(daqbridge.sim.__file__).with_name("scpi_instrument.yaml")


@pytest.fixture
def pty_path():
    controller, device = os.openpty()
    try:
        yield os.ttyname(device)
    finally:
        os.close(controller)
        os.close(device)


def test_lists_a_pty_and_identifies_visa_instruments(capsys, pty_path):
    code = main(
        ["hardware", "--port", pty_path, "--visa-backend", f"{SCPI_YAML}@sim", "--identify"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Serial ports" in out and pty_path in out
    assert "VISA resources" in out
    assert "GPIB0::20::INSTR" in out
    assert "DAQBRIDGE-SIM,SCPI-DMM,SIM0002" in out  # its answer to *IDN?


def test_json_listing(capsys, pty_path):
    code = main(["hardware", "--port", pty_path, "--no-visa", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert pty_path in [p["device"] for p in report["serial_ports"]]
    assert report["visa_resources"] == [] and report["missing_ports"] == []


def test_missing_hardware_of_a_profile_is_reported(capsys, tmp_path, pty_path):
    profile = tmp_path / "lab.toml"
    profile.write_text(
        f"""
[lab]
name = "hardware check"

[[instruments]]
id = "stage"
driver = "esp300"
port = "{pty_path}"

[instruments.esp300]
axes = [{{ number = 1, name = "x", low_limit = -1.0, high_limit = 1.0 }}]

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "{tmp_path / "no-such-port"}"
"""
    )
    code = main(["hardware", "--no-visa", "--profile", str(profile)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["stage"].rstrip().endswith("yes")
    assert lines["meter"].rstrip().endswith("NO")
    assert "not present: meter" in err
