"""Fixtures of the bridge tests: the device tests' own (a port pool, a RunEngine, its documents)."""

from tests.devices.conftest import RE, docs, serial_pool, wait_until  # noqa: F401 - found by name
