"""What `pip install daqbridge` brings: the embedded catalog's needs, not a whole Tiled server.

The dependency tree is walked through the metadata of the installed distributions (every
declared package is installed here), so a requirement that drags in a heavy package through
an extra or a dependency of a dependency is caught, not only a direct one.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

# Parts of tiled[server] that the embedded SQLite catalog never uses (see docs/performance.md):
# DuckDB table storage (it also locks the catalog against a second process), Postgres,
# object stores, zarr and its codecs, extra compressors and file formats.
NOT_IN_A_LEAN_INSTALL = {
    "duckdb",
    "adbc-driver-postgresql",
    "asyncpg",
    "obstore",
    "minio",
    "zarr",
    "blosc2",
    "tifffile",
    "h5netcdf",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _installed_closure(requirements: list[str]) -> dict[str, str]:
    """Every distribution the requirements pull in: {name: the chain that pulls it}."""
    seen: dict[str, set[str]] = {}
    chain: dict[str, str] = {}
    todo = [(Requirement(r), "daqbridge") for r in requirements]
    while todo:
        requirement, parent = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        known = seen.get(name)
        if known is not None and extras <= known:
            continue
        new_extras = extras - (known or set())
        seen[name] = (known or set()) | extras
        chain.setdefault(name, f"{parent} -> {name}")
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{name} ({chain[name]}) is not installed") from None
        wanted = ({""} if known is None else set()) | new_extras
        for line in requires:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None:
                via = [""] if known is None else []
            else:
                via = [extra for extra in wanted if marker.evaluate({"extra": extra})]
            if via:
                todo.append((dependency, chain[name] + (f"[{via[0]}]" if via[0] else "")))
    return chain


def test_the_core_install_brings_no_unused_tiled_server_parts():
    pulled = _installed_closure(_project()["dependencies"])
    unused = {name: pulled[name] for name in sorted(NOT_IN_A_LEAN_INSTALL & pulled.keys())}
    assert unused == {}


def test_the_full_tiled_server_is_an_extra():
    """A stock `tiled serve` (DuckDB tables in its --temp catalog) still installs in one word."""
    extra = [Requirement(r) for r in _project()["optional-dependencies"]["full-tiled"]]
    assert any(r.name == "tiled" and "server" in r.extras for r in extra), extra


def test_a_run_needs_only_what_the_core_install_brings(tmp_path):
    """`pip install daqbridge` then `daqbridge run` (the README's first command) on a machine
    that has only the core install: the run is made in a process where every package outside
    the core dependencies' closure cannot be imported (optional imports fall back, as on a fresh
    machine). bluesky-queueserver was once only in the test extra, and the README's first
    command failed on a fresh machine while every test passed here."""
    import json
    import os
    import subprocess
    import sys

    pulled = _installed_closure(_project()["dependencies"])
    blocked = sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if module not in sys.stdlib_module_names
        and not any(canonicalize_name(d) in pulled or d == "daqbridge" for d in dists)
    )
    assert "selenium" in blocked  # the blocking is real: the test extra is outside the core
    code = (
        "import json, sys\n"
        # None in sys.modules: `import x` raises ModuleNotFoundError and find_spec says None
        f"sys.modules.update(dict.fromkeys(json.loads({json.dumps(json.dumps(blocked))})))\n"
        "from daqbridge.cli import main\n"
        "sys.exit(main(['run', 'count', 'sim_meter', '1']))\n"
    )
    env = {**os.environ, "DAQBRIDGE_DATA": str(tmp_path / "data"), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
