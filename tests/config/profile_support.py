"""Shared helpers of the profile tests: the sim profile as data, and issue lookups."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daqbridge.config import Issue, ProfileInvalid, load_profile

ROOT = Path(__file__).resolve().parents[2]
SIM_TOML = ROOT / "profiles" / "sim.toml"
LAB_EXAMPLE = ROOT / "profiles" / "lab.example.toml"
EMBEDDED_SIM = ROOT / "daqbridge" / "profiles" / "sim.toml"
DOC = ROOT / "docs" / "profile.md"

_SIM_DATA = tomllib.loads(SIM_TOML.read_text(encoding="utf-8"))


def sim_data() -> dict[str, Any]:
    """A fresh deep copy of profiles/sim.toml as a dict, to mutate."""
    return copy.deepcopy(_SIM_DATA)


def instrument(data: dict[str, Any], ident: str) -> dict[str, Any]:
    return next(i for i in data["instruments"] if i["id"] == ident)


def index_of(data: dict[str, Any], ident: str) -> int:
    return next(n for n, i in enumerate(data["instruments"]) if i["id"] == ident)


def errors_of(source: Any, **kw: Any) -> list[Issue]:
    """The issues ProfileInvalid carries; fails the test if the profile loads."""
    with pytest.raises(ProfileInvalid) as info:
        load_profile(source, **kw)
    return info.value.issues


def one_issue(source: Any, rule: str, **kw: Any) -> Issue:
    """The single issue of ``rule``; fails listing them all otherwise."""
    issues = errors_of(source, **kw)
    matching = [i for i in issues if i.rule == rule]
    assert len(matching) == 1, [str(i) for i in issues]
    return matching[0]


class SetOfPorts:
    """A port checker that knows a fixed set of ports (a machine with these adapters)."""

    def __init__(self, *ports: str) -> None:
        self.ports = set(ports)
        self.asked: list[str] = []

    def exists(self, port: str) -> bool:
        self.asked.append(port)
        return port in self.ports
