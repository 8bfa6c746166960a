"""Property tests: any malformed profile is a ConfigError (or still valid), never a crash.

Mutations start from the real sim profile, so they reach deep into the tables (axes, addresses,
signals, sim wiring) instead of failing at the first missing key like random dicts would.
"""

from __future__ import annotations

import copy
import math
import tomllib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daqbridge.config import (
    Profile,
    ProfileInvalid,
    check_profile,
    dumps_toml,
    load_profile,
    migrate_legacy,
)
from daqbridge.errors import ConfigError
from tests.config.profile_support import SIM_TOML, sim_data

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KNOWN_WORDS = [
    "id", "driver", "stack", "port", "resource", "camera", "prefix", "baud_rate", "timeout",
    "esp300", "maitai", "elliptec", "scpi", "pvcam", "epics", "newport1830c", "axes", "number",
    "name", "low_limit", "high_limit", "addresses", "address", "signals", "query", "command",
    "sim", "speed", "shadow", "legacy", "native", "pty", "sim-tcp", "frames_dir", "couplings",
    "source", "sink", "lab", "data_dir", "enabled", "sim_stage", "sim://esp300?name=a", "2",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(KNOWN_WORDS),
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KNOWN_WORDS) | st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, prefix + (i,)))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_profiles(draw, allow_none: bool = False) -> dict:
    data = sim_data()
    values = toml_values | st.none() if allow_none else toml_values
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths[1:]))
        parent, last = _get(data, path[:-1]), path[-1]
        op = draw(st.sampled_from(["delete", "replace", "unknown", "duplicate", "wrap", "text"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(values)
        elif op == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KNOWN_WORDS) | st.text(max_size=8))] = draw(values)
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif op == "wrap":
            parent[last] = draw(st.sampled_from([[parent[last]], {"x": parent[last]}]))
        else:
            parent[last] = draw(st.text(max_size=20) | st.sampled_from(KNOWN_WORDS))
    return data


def _load_or_config_error(source: Any) -> Profile | None:
    try:
        profile = load_profile(source)
    except ConfigError as exc:
        assert str(exc)  # composing the message must not fail either
        if isinstance(exc, ProfileInvalid):
            assert exc.issues and all(i.what and i.fix for i in exc.issues)
        return None
    assert isinstance(profile, Profile)
    profile.device_ids()  # the runtime's helpers work on anything that loads
    profile.native_instruments()
    profile.legacy_instruments()
    return profile


@SETTINGS
@given(mutated_profiles(allow_none=True))
def test_mutated_mappings_load_or_raise_config_error(data):
    _load_or_config_error(data)


@SETTINGS
@given(mutated_profiles())
def test_mutated_profiles_written_as_toml_load_or_raise_config_error(data):
    text = dumps_toml(data)
    assert _same(tomllib.loads(text), data)
    _load_or_config_error(text)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


@SETTINGS
@given(st.text(max_size=300))
def test_random_text_is_a_config_error_or_a_profile(text):
    _load_or_config_error(text.encode("utf-8"))


_SIM_LINES = SIM_TOML.read_text().splitlines()


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_SIM_LINES) - 1),
            st.sampled_from(["drop", "insert", "truncate"]),
            st.text(max_size=10) | st.sampled_from(["[", "]", "=", '"', "[[instruments]]"]),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_damaged_sim_toml_text_is_a_config_error_or_a_profile(edits):
    lines = list(_SIM_LINES)
    for n, op, junk in edits:
        n = min(n, len(lines) - 1)
        if op == "drop":
            del lines[n]
        elif op == "insert":
            lines.insert(n, junk)
        else:
            lines[n] = lines[n][: len(lines[n]) // 2] + junk
    text = "\n".join(lines) + "\n"
    _load_or_config_error(text.encode("utf-8"))
    try:
        check_profile(text.encode("utf-8"))
    except ConfigError:
        pass


legacy_keys = st.sampled_from(
    ["type", "port", "baud_rate", "polling_rate_hz", "device_addresses", "axes",
     "wavelength_nm", "filter", "reply_terminator", "extra"]
)  # fmt: skip
legacy_axis = st.dictionaries(st.sampled_from(["number", "min", "max"]), scalars)
legacy_values = (
    st.sampled_from(["esp300", "elliptec", "maitai", "newport_1830c", "zz"])
    | scalars
    | st.lists(scalars | legacy_axis, max_size=3)
)
legacy_tables = st.dictionaries(
    st.sampled_from(["a", "meter", "stage", "bus", "x-y"]),
    st.dictionaries(legacy_keys, legacy_values, max_size=6),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None, database=None)
@given(legacy_tables)
def test_migration_of_random_legacy_tables_never_crashes(instruments):
    text = dumps_toml({"instruments": instruments})
    try:
        migration = migrate_legacy(text)
    except ConfigError:
        return
    # whatever was written parses as TOML; it loads or its problems are listed
    tomllib.loads(migration.profile_text)
    assert not any("does not parse" in p for p in migration.problems), migration.problems
