"""docs/migrating.md, executed: the walkthrough a scientist follows, command by command.

Every ``$ `` line of the page's ``console`` blocks runs, in order, in a bash shell started in the
checkout with the venv active (its bin first on PATH, as after the README's first block) and a
fresh HOME, so ``~/lab.toml`` and the simulated lab's data directory are this test's own. Each
command must exit 0: a command of the page that breaks fails here first. Then the runs of each
era (tagged ``--md era=...`` by the page) are compared from the catalog, as a lab would
compare them (issue 18, "Proof").
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from daqbridge.catalog import open_catalog

from .conftest import CLI_TIMEOUT, child_env, fresh_data_dir

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "migrating.md"
CONSOLE = re.compile(r"^```console\n(.*?)^```", re.S | re.M)
ERAS = ("legacy", "shadow", "native", "rollback")
STACK_OF_ERA = {"legacy": "legacy", "shadow": "shadow", "native": "native", "rollback": "legacy"}
MIGRATED = ("sim_laser", "sim_rotators")
# The devices of the migrated instruments the lab's plans record: the laser and mount c.
RECORDED = ("sim_laser", "sim_rotators_c")


def walkthrough_commands(text: str) -> list[str]:
    """The executed commands of a page: ``$ `` lines of its ``console`` blocks, in order."""
    return [
        line[2:].strip()
        for block in CONSOLE.findall(text)
        for line in block.splitlines()
        if line.startswith("$ ")
    ]


@dataclass
class Step:
    command: str
    code: int
    out: str
    err: str


def run_walkthrough(commands: list[str], home: Path) -> list[Step]:
    """Run ``commands`` one after the other as a reader pastes them; stop at the first failure."""
    env = child_env(HOME=str(home))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    steps: list[Step] = []
    for command in commands:
        done = subprocess.run(
            command,
            shell=True,
            executable="/bin/bash",
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        steps.append(Step(command, done.returncode, done.stdout, done.stderr))
        if done.returncode != 0:
            break
    return steps


def check_steps(commands: list[str], steps: list[Step]) -> None:
    for step in steps:
        assert step.code == 0, (
            f"`{step.command}` exited {step.code}:\n{step.out[-3000:]}\n{step.err[-3000:]}"
        )
    assert [s.command for s in steps] == commands


@pytest.fixture(scope="module")
def walkthrough(cli_catalog_template, tmp_path_factory):
    home = tmp_path_factory.mktemp("walkthrough-home")
    # An empty catalog where the simulated lab keeps its data (~/daqbridge-data/sim): the same
    # as the first run's, without its seconds of schema set-up.
    data = fresh_data_dir(cli_catalog_template, home / "daqbridge-data" / "sim")
    commands = walkthrough_commands(DOC.read_text())
    steps = run_walkthrough(commands, home)
    return commands, steps, home, data


@pytest.fixture(scope="module")
def eras(walkthrough):
    """{era: {plan_name: (start document, primary descriptor, primary table)}} of the runs."""
    commands, steps, home, data = walkthrough
    check_steps(commands, steps)
    catalog = open_catalog(data, readonly=True)
    found: dict[str, dict[str, tuple]] = {}
    try:
        for summary in catalog.runs(100):
            run = catalog.client[summary.uid]
            start = dict(run.metadata["start"])
            era = start.get("era")
            if era not in ERAS:
                continue
            primary = run["primary"]
            found.setdefault(era, {})[start["plan_name"]] = (
                start,
                dict(primary.metadata),
                primary.read(),
            )
    finally:
        catalog.close()
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_command_of_the_walkthrough_succeeds(walkthrough):
    commands, steps, home, data = walkthrough
    # Guards the extraction: a changed fence or prompt must not leave nothing to run.
    assert sum(c.startswith("daqbridge run ") for c in commands) >= 7, commands
    for era in ERAS:
        assert any(f"--md era={era}" in c for c in commands), era
    check_steps(commands, steps)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_each_eras_runs_record_the_stack_of_the_laser_and_the_bus(eras):
    assert set(eras) == set(ERAS)
    for era, runs in eras.items():
        for plan, (start, _, _) in runs.items():
            stacks = start["instrument_stacks"]
            for instrument in MIGRATED:
                assert stacks[instrument] == STACK_OF_ERA[era], (era, plan, stacks)
            assert len(start["profile_sha256"]) == 64


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shadow_era_events_carry_the_legacy_readings_and_their_differences(eras):
    _, _, scan = eras["shadow"]["wavelength_scan"]
    assert list(scan["sim_laser_legacy_wavelength"].values) == [780.0, 800.0]
    assert list(scan["sim_laser_shadow_diff_wavelength"].values) == [0.0, 0.0]
    _, _, turn = eras["shadow"]["polarization_scan"]
    for native, twin, diff in zip(
        turn["sim_rotators_c"].values,
        turn["sim_rotators_c_legacy"].values,
        turn["sim_rotators_c_shadow_diff"].values,
        strict=True,
    ):
        assert math.isfinite(twin) and math.isfinite(diff), (native, twin, diff)
        assert abs(native - twin) <= 0.05 and diff == pytest.approx(native - twin)
    assert list(turn["sim_rotators_c"].values) == pytest.approx([0.0, 45.0], abs=0.05)


def _keys_and_units(descriptor: dict) -> dict[str, str | None]:
    """Data keys of the migrated devices and their units; the shadow-only keys left out."""
    return {
        key: entry.get("units")
        for key, entry in descriptor["data_keys"].items()
        if key.startswith(RECORDED) and "_legacy" not in key and "_shadow_diff" not in key
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_laser_and_the_mount_record_the_same_keys_and_units_in_every_era(eras):
    for plan in ("wavelength_scan", "polarization_scan"):
        by_era = {era: _keys_and_units(runs[plan][1]) for era, runs in eras.items() if plan in runs}
        reference = by_era["native"]  # the native names are the target
        assert reference, plan
        for era, keys in by_era.items():
            assert keys == reference, f"{plan}: {era} era records {keys}, native {reference}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_rollback_gives_back_the_legacy_profile_byte_for_byte(walkthrough, eras):
    commands, steps, home, data = walkthrough
    check_steps(commands, steps)
    before = (home / "lab-before.toml").read_bytes()
    assert (home / "lab.toml").read_bytes() == before
    # The page's lab before migrating: the simulated lab with the bus back on its legacy driver.
    original = (ROOT / "profiles" / "sim.toml").read_text().splitlines()
    changed = [
        (a, b) for a, b in zip(original, before.decode().splitlines(), strict=True) if a != b
    ]
    assert changed == [('stack = "native"', 'stack = "legacy"')]
    legacy_hash = eras["legacy"]["polarization_scan"][0]["profile_sha256"]
    assert eras["rollback"]["polarization_scan"][0]["profile_sha256"] == legacy_hash


def test_a_broken_command_of_the_page_fails_the_walkthrough(tmp_path):
    page = "```console\n$ cp profiles/sim.toml ~/lab.toml\n$ daqbridge config switch sim_rotators --stack nativ --profile ~/lab.toml\n$ cmp ~/lab.toml profiles/sim.toml\n```\n"  # noqa: E501
    commands = walkthrough_commands(page)
    steps = run_walkthrough(commands, tmp_path)
    assert [s.code == 0 for s in steps] == [True, False]  # stopped at the broken one
    with pytest.raises(AssertionError, match="config switch sim_rotators --stack nativ"):
        check_steps(commands, steps)
