"""Fixtures the driver-settings property tests share (each module gets its own instances)."""

from __future__ import annotations

import pytest

from daqbridge.transport import SerialPortPool


@pytest.fixture(scope="module")
def pool():
    """A port pool for one module's devices, closed with the module."""
    with SerialPortPool() as p:
        yield p


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data directory for one module's builds (the runtime's build context needs one)."""
    return tmp_path_factory.mktemp("data")
