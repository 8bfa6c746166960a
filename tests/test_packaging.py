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
