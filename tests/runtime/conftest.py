"""Fixtures of the runtime tests: small lab profiles, data directories, a catalog template.

This conftest also sits above tests/runtime/{catalog,profile,resources}: it defines no autouse
fixture and only names starting with ``rt_`` / ``runtime_``, so it changes nothing there.

Creating a catalog costs about 3 s (a schema migration in a subprocess); every runtime here gets
a copy of one empty, initialised catalog instead, and DAQBRIDGE_DATA always points at it.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daqbridge.catalog import DATA_ENV, open_catalog


@pytest.fixture(scope="session")
def runtime_catalog_template(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("runtime-catalog-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATA_ENV, raising=False)
        open_catalog(directory, recover=False).close()
    return directory


def copy_catalog(template: Path, target: Path) -> Path:
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("wal"))
    return target


@pytest.fixture
def runtime_data(runtime_catalog_template, tmp_path, monkeypatch) -> Path:
    """This test's data directory (an empty catalog), set as DAQBRIDGE_DATA."""
    data = copy_catalog(runtime_catalog_template, tmp_path / "data")
    monkeypatch.setenv(DATA_ENV, str(data))
    return data


def unique(prefix: str) -> str:
    """Simulator names are process-wide: every profile gets its own."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def lab_profile(
    tag: str,
    *,
    stage: str | None = "native",
    meter: str | None = "shadow",
    laser: str | None = None,
    stacks: str = "",
    shutdown: str = "",
    speed: float = 50.0,
    velocity: float = 5.0,
    meter_driver_table: str = "",
    extra: str = "",
) -> str:
    """A small simulated lab: ESP300 stage (axis x), 1830-C meter, optionally a MaiTai on a pty.

    ``stage`` / ``meter`` / ``laser`` give each entry's stack (None leaves it out).
    """
    parts = [
        f"""
[lab]
name = "test lab {tag}"
data_dir = "unused-data-dir"

[simulation]
enabled = true
speed = {speed}
{stacks}
{shutdown}
"""
    ]
    if stage is not None:
        parts.append(
            f"""
[[instruments]]
id = "stage"
driver = "esp300"
stack = "{stage}"
port = "sim://esp300?name={tag}_stage"

[[instruments.esp300.axes]]
number = 1
name = "x"
units = "mm"
velocity = {velocity}
acceleration = 50.0
low_limit = -25.0
high_limit = 25.0
"""
        )
    if meter is not None:
        parts.append(
            f"""
[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "{meter}"
port = "sim://newport1830c?name={tag}_meter"
{"polling_rate_hz = 10.0" if meter != "native" else ""}
{meter_driver_table}
"""
        )
    if laser is not None:
        parts.append(
            f"""
[[instruments]]
id = "laser"
driver = "maitai"
stack = "{laser}"
port = "pty"
polling_rate_hz = 2.0
sim = {{ options = {{ warmed_up = true }} }}
"""
        )
    parts.append(extra)
    return "\n".join(parts)


@pytest.fixture
def runtime_profile(tmp_path) -> Callable[..., Path]:
    """Write a profile (``lab_profile`` keywords, or ``text=``) and return its path."""

    def write(name: str = "lab", *, text: str | None = None, **kw) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(text if text is not None else lab_profile(unique(name), **kw))
        return path

    return write


@pytest.fixture
def runtime_child_env(tmp_path) -> Iterator[dict[str, str]]:
    """Environment of helper processes: this test's sys.path, no inherited data directory."""
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    yield env
