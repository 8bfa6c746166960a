"""The runtime checks the Tiled server before it opens a port (issue 15), in-process.

The meter's simulator is the test's own (registered under a unique name): had start-up got as
far as opening ports, it would have seen the driver's first query.
"""

from __future__ import annotations

import socket
import uuid

import pytest

import daqbridge.sim
from daqbridge.config import ProfileInvalid, load_profile


def _refused_uri() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _lab(tmp_path, name: str, uri: str) -> str:
    return f"""
[lab]
name = "preflight"
data_dir = "{tmp_path / "data"}"
catalog_uri = "{uri}"

[simulation]
enabled = true

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "sim://newport1830c?name={name}"
"""


def test_from_profile_refuses_an_unreachable_server_before_any_port_opens(tmp_path, monkeypatch):
    from daqbridge.runtime import Runtime

    monkeypatch.delenv("DAQBRIDGE_DATA", raising=False)
    name = f"preflight-{uuid.uuid4().hex[:8]}"
    meter = daqbridge.sim.register(name, daqbridge.sim.create_simulator("newport1830c"))
    uri = _refused_uri()
    try:
        with pytest.raises(ProfileInvalid) as caught:
            Runtime.from_profile(load_profile(_lab(tmp_path, name, uri)))
        (issue,) = caught.value.issues
        assert (issue.rule, issue.key, issue.resource) == (
            "catalog-unreachable",
            "lab.catalog_uri",
            uri,
        )
        assert meter.received_lines == []
    finally:
        daqbridge.sim.unregister(name)


def test_offline_leaves_the_server_alone(tmp_path):
    from daqbridge.config import preflight_issues

    profile = load_profile(_lab(tmp_path, "unused", _refused_uri()))
    assert [i.rule for i in preflight_issues(profile)] == ["catalog-unreachable"]
    assert preflight_issues(profile, network=False) == []
