"""``config switch``: one instrument moves between the stacks, and back, without losing anything.

Issue 18, item 7: the switch edits only the entry's ``stack`` (comments, order and quoting kept),
keeps the settings only one stack reads so a rollback restores them, switches a bus with all its
mounts, and refuses what it cannot do with the id to use. Every run records the profile's
content hash and each instrument's stack (``run_provenance``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from event_model import DocumentNames, schema_validators

from daqbridge.cli import main
from daqbridge.config import (
    ProfileInvalid,
    check_profile,
    load_profile,
    run_provenance,
    switch_stack,
)
from daqbridge.errors import ConfigError

# What a lab's migrated profile looks like after a person has worked on it: comments on the
# stack line and between keys, a literal string, legacy-only settings, a bus of mounts.
LAB = """\
# the optics table
[lab]
name = "switch test lab"   # shown in every run
data_dir = "data"

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = 'legacy'     # the native driver is on trial
port = "/dev/ttyS7"
polling_rate_hz = 5.0  # the legacy driver polls; keep it for a rollback

[instruments.newport1830c]
wavelength_nm = 800
range = 0

[instruments.legacy]
lease_timeout_s = 7.0

[[instruments]]
id = "rot"
driver = "elliptec"
stack = "legacy"
port = "/dev/ttyS8"

# half-wave plate and polariser
[instruments.elliptec]
addresses = [
    { address = "2", name = "hwp" },
    { address = "3", name = "pol", low_limit = -90.0, high_limit = 90.0 },
]

[[instruments]]
id = "stage"
driver = "esp300"
port = "/dev/ttyS9"

[instruments.esp300]
axes = [{ number = 1, name = "x", low_limit = -5.0, high_limit = 5.0 }]
"""


@pytest.fixture
def lab(tmp_path) -> Path:
    path = tmp_path / "lab.toml"
    path.write_bytes(LAB.encode())
    return path


def test_legacy_shadow_native_legacy_gives_back_the_same_bytes(lab):
    for stack in ("shadow", "native", "legacy"):
        result = switch_stack(lab, "meter", stack)
        assert result.after == stack and result.changed
        meter = load_profile(lab).instrument("meter")
        assert meter.stack == stack
        # what a rollback needs is still there, whatever the stack
        assert meter.polling_rate_hz == 5.0 and meter.legacy.lease_timeout_s == 7.0
    assert lab.read_bytes() == LAB.encode()


def test_config_check_does_not_ask_to_delete_rollback_settings(lab):
    switch_stack(lab, "meter", "native")
    profile, issues = check_profile(lab)
    assert profile is not None and profile.instrument("meter").stack == "native"
    assert issues == []


def test_switching_a_bus_switches_all_its_mounts(lab):
    result = switch_stack(lab, "rot", "shadow")
    assert result.devices_before == ["rot", "rot_hwp", "rot_pol"]
    assert result.devices_after == [
        "rot",
        "rot_hwp",
        "rot_pol",
        "rot_legacy",
        "rot_hwp_legacy",
        "rot_pol_legacy",
    ]
    assert set(result.devices_after) <= set(load_profile(lab).device_ids())


@pytest.mark.parametrize(
    ("asked", "stack", "words"),
    [
        ("meterr", "native", "did you mean 'meter'?"),
        ("rot_pol", "native", "config switch rot --stack"),
        ("stage", "legacy", "has no legacy driver"),
        ("meter", "nativ", "did you mean 'native'?"),
    ],
)
def test_refusals_name_what_to_do_and_leave_the_file_alone(lab, asked, stack, words):
    with pytest.raises(ConfigError) as info:
        switch_stack(lab, asked, stack)
    assert words in str(info.value)
    assert lab.read_bytes() == LAB.encode()


def test_a_switch_the_profile_rules_refuse_is_not_written(lab):
    # a shadow twin is <id>_legacy: that id is taken here
    text = LAB.replace('id = "stage"', 'id = "meter_legacy"')
    lab.write_text(text)
    with pytest.raises(ProfileInvalid, match="meter_legacy"):
        switch_stack(lab, "meter", "shadow")
    assert lab.read_text() == text


def test_a_missing_stack_key_is_written_after_the_driver(lab):
    switch_stack(lab, "rot", "native")
    result = switch_stack(lab, "stage", "native")
    assert not result.changed  # no key means native already
    lab.write_text(LAB.replace('stack = "legacy"\nport = "/dev/ttyS8"', 'port = "/dev/ttyS8"'))
    switch_stack(lab, "rot", "shadow")
    assert 'driver = "elliptec"\nstack = "shadow"\nport = "/dev/ttyS8"' in lab.read_text()


def test_cli_switch_and_its_errors(lab, capsys):
    assert main(["config", "switch", "rot", "--stack", "shadow", "--profile", str(lab)]) == 0
    out = capsys.readouterr().out
    assert "switched rot (elliptec) from legacy to shadow" in out
    assert "rot_pol_legacy" in out and "--stack legacy" in out
    assert main(["config", "switch", "rott", "--stack", "native", "--profile", str(lab)]) == 1
    assert "did you mean 'rot'?" in capsys.readouterr().err
    before = lab.read_bytes()
    argv = ["config", "switch", "rot", "--stack", "native", "--profile", str(lab), "--dry-run"]
    assert main(argv) == 0
    assert "nothing written" in capsys.readouterr().out
    assert lab.read_bytes() == before


# --- what every run records ------------------------------------------------------------------


def test_run_provenance_names_the_content_and_each_stack(lab):
    before = run_provenance(load_profile(lab))
    assert before["instrument_stacks"] == {"meter": "legacy", "rot": "legacy", "stage": "native"}
    # comments and layout are not content
    lab.write_text(LAB.replace("# the optics table\n", "").replace("   # shown in every run", ""))
    assert run_provenance(load_profile(lab)) == before
    switch_stack(lab, "meter", "shadow")
    after = run_provenance(load_profile(lab))
    assert after["instrument_stacks"]["meter"] == "shadow"
    assert after["profile_sha256"] != before["profile_sha256"]
    assert len(after["profile_sha256"]) == 64


def test_run_provenance_goes_into_a_valid_start_document(lab):
    md = run_provenance(load_profile(lab))
    RE = RunEngine(md, context_managers=[])
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    def plan():
        yield from bps.open_run()
        yield from bps.close_run()

    RE(plan())
    (start,) = [doc for name, doc in docs if name == "start"]
    schema_validators[DocumentNames.start].validate(start)
    assert start["profile_sha256"] == md["profile_sha256"]
    assert start["instrument_stacks"] == md["instrument_stacks"]
