"""Project hygiene that nobody should have to remember: layer contracts and lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold():
    """import-linter contracts of pyproject.toml: the exhaustive layers of docs/architecture.md,
    the legacy stack free of ophyd/bluesky, and no simulator below the runtime."""
    # In a process of its own: import-linter configures logging with dictConfig, which disables
    # every logger that exists by then (a later test's caplog saw none of the drivers' warnings).
    script = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


# (module that gains the import, the import, the contract that must break)
FORBIDDEN = [
    ("devices/_base.py", "from daqbridge.config import Profile", "layers of daqbridge"),
    ("transport/_serial.py", "import daqbridge.devices.maitai", "layers of daqbridge"),
    ("catalog/_wal.py", "import daqbridge.plans", "layers of daqbridge"),
    ("legacy/_maitai.py", "import bluesky", "legacy stack is independent"),
    ("plans/_checks.py", "import daqbridge.sim.maitai", "imports the simulators"),
]


def _lint_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the package and pyproject.toml, perhaps with one more import."""
    shutil.copytree(
        ROOT / "daqbridge", tmp_path / "daqbridge", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    if edit is not None:
        module = tmp_path / "daqbridge" / edit[0]
        module.write_text(module.read_text(encoding="utf-8") + f"\n{edit[1]}  # noqa\n")
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(lint), "--no-cache", "--config", "pyproject.toml"],
        cwd=tmp_path,
        # the copy, not the installed package, is the one grimp finds
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_copy_the_contracts_are_tried_on_keeps_them(tmp_path):
    result = _lint_copy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(tmp_path) not in result.stdout  # sanity: a clean report, no paths of errors


@pytest.mark.parametrize(("module", "line", "contract"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    """The contracts bite: one import against the architecture, and lint-imports fails on it."""
    result = _lint_copy(tmp_path, (module, line))
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [ln for ln in result.stdout.splitlines() if ln.rstrip().endswith(" BROKEN")]
    assert len(broken) == 1 and contract in broken[0], result.stdout


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
