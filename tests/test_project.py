"""Project hygiene that nobody should have to remember: layer contracts and lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold():
    """import-linter contracts of pyproject.toml: resources below everything, legacy independent
    of ophyd/bluesky, simulators reached only through the CLI, IOC and runtime._simulation."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff not installed",
)
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "--quiet", "daqbridge", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_profile_matches_the_profiles_directory():
    assert (ROOT / "profiles" / "sim.toml").read_text() == (
        ROOT / "daqbridge" / "profiles" / "sim.toml"
    ).read_text()
