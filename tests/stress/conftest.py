"""Fixtures of the stress campaigns: data directories, runtimes, the long/short forms.

* ``ci_short`` tests run in the default test run (``pytest -m "not stress or ci_short"``) and are
  bounded; ``stress`` tests are the long forms. A bare ``pytest tests/stress`` (no ``-m``) skips
  the long forms too, so nobody starts an hour-long soak by accident; ``-m stress`` runs them.
* Creating a catalog costs several seconds (a schema migration in a subprocess): one empty,
  initialised catalog is made per session and every runtime gets a copy.
* ``DAQBRIDGE_DATA`` overrides every data directory, so it is removed for the session.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daqbridge.catalog import DATA_ENV, open_catalog
from tests.stress import support

log = logging.getLogger("tests.stress")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long_forms = [
        item
        for item in items
        if item.get_closest_marker("stress") and not item.get_closest_marker("ci_short")
    ]
    # The long forms run for as long as they are told (the project default is 120 s a test).
    limit = support.env_number("DAQBRIDGE_STRESS_TIMEOUT", 4 * 3600.0)
    for item in long_forms:
        item.add_marker(pytest.mark.timeout(limit))
    if config.option.markexpr:
        return  # the caller chose what runs
    skip = pytest.mark.skip(reason="long form: run with -m stress (see docs/robustness.md)")
    for item in long_forms:
        item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in support.REPORT:
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
    support.REPORT.clear()


@pytest.fixture(scope="session", autouse=True)
def _no_data_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATA_ENV, raising=False)
        yield


@pytest.fixture(scope="session")
def stress_catalog_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("stress-catalog-template")
    open_catalog(directory, recover=False).close()
    return directory


@pytest.fixture(scope="session")
def stress_data(stress_catalog_template: Path, tmp_path_factory) -> Callable[[str], Path]:
    """``stress_data(name)``: a fresh data directory holding an empty catalog."""

    def make(name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "data"
        return support.copy_catalog(stress_catalog_template, target)

    return make


@pytest.fixture(scope="module")
def sim_lab(stress_data, tmp_path_factory) -> Iterator[Any]:
    """The simulated lab of profiles/sim.toml (own simulator names), started once per module.

    Module scope, not session: the simulated PVCAM camera opens exclusively per process, as the
    real SDK does, so two labs with a camera cannot be alive at once. Its shutdown must be
    clean: a phase forced at the end of a soak is a hung driver.
    """
    tag = uuid.uuid4().hex[:6]
    path = tmp_path_factory.mktemp("sim-lab") / "sim.toml"
    path.write_text(support.lab_profile_text(tag))
    rt = support.start_runtime(path, stress_data("sim-lab"))
    try:
        yield rt
    finally:
        report = rt.close(reason="end of module")
        support.report("sim lab shutdown", report.format().splitlines())
        assert report.clean, report.format()
