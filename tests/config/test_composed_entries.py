"""The profile's ``[[instruments]]`` entries are composed from what the drivers declared.

A driver module's ``register_driver(..., entry=ProfileEntry(...))`` is all the profile needs: the
transport, the defaults that are the instrument's own, the flow controls it cannot use, its parts
and what its table tells the simulator. These tests declare a made-up serial instrument (a lamp
with two shutters) in the test itself and show the profile accepts it, with its defaults and
parts, without a line of ``daqbridge.config`` naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from pydantic import Field, ValidationError

from daqbridge.config import DRIVERS, SerialInstrument
from daqbridge.config._models import (
    DECLARED_DRIVERS,
    INSTRUMENT_CLASSES,
    compose_entry,
)
from daqbridge.devices import (
    DriverSettings,
    EntryDefault,
    ProfileEntry,
    declared_driver,
    registered_drivers,
)
from tests.config.profile_support import ROOT

LAMP_MODULE = '''
"""A made-up serial instrument: a lamp with named shutters (test only)."""

from pydantic import Field

from daqbridge.devices import DriverSettings, EntryDefault, ProfileEntry, register_driver


class LampShutter(DriverSettings):
    name: str


class LampSettings(DriverSettings):
    """``[instruments.lamp]``: the lamp's shutters."""

    shutters: list[LampShutter] = Field(min_length=1, description="The shutters, by name.")
    intensity: float = Field(0.5, ge=0, le=1, description="Relative intensity.")


def build(port, *, name, settings, timeout):
    raise NotImplementedError("the schema is all this test needs")


register_driver(
    "lamp",
    settings=LampSettings,
    build=build,
    entry=ProfileEntry(
        "A made-up lamp with shutters.",
        table_description="The shutters.",
        defaults={"baud_rate": EntryDefault(38400, "Baud rate (lamp: 38400).")},
        refused_flow_controls={"xonxoff": "the lamp's replies contain XOFF bytes"},
        part_names=lambda settings: [s.name for s in settings.shutters],
        simulator_options=lambda settings: {"shutters": len(settings.shutters)},
    ),
)
'''


class LampShutter(DriverSettings):
    name: str


class LampSettings(DriverSettings):
    """``[instruments.lamp]``: the lamp's shutters."""

    shutters: list[LampShutter] = Field(min_length=1, description="The shutters, by name.")
    intensity: float = Field(0.5, ge=0, le=1, description="Relative intensity.")


def build_lamp(port: Any, *, name: str, settings: LampSettings, timeout: float) -> Any:
    raise NotImplementedError("the schema is all this test needs")


LAMP_ENTRY = ProfileEntry(
    "A made-up lamp with shutters.",
    table_description="The shutters.",
    defaults={"baud_rate": EntryDefault(38400, "Baud rate (lamp: 38400).")},
    refused_flow_controls={"xonxoff": "the lamp's replies contain XOFF bytes"},
    part_names=lambda settings: [s.name for s in settings.shutters],
    simulator_options=lambda settings: {"shutters": len(settings.shutters)},
)


def test_a_declared_serial_driver_gets_an_entry_with_its_defaults_and_parts():
    with declared_driver("lamp", settings=LampSettings, build=build_lamp, entry=LAMP_ENTRY) as spec:
        entry_class = compose_entry(spec)
        assert issubclass(entry_class, SerialInstrument)
        assert entry_class.__name__ == "LampInstrument"
        assert entry_class.__doc__ == "A made-up lamp with shutters."

        lamp = entry_class.model_validate(
            {
                "id": "lamp1",
                "driver": "lamp",
                "port": "sim://lamp?name=lamp1",
                "lamp": {"shutters": [{"name": "a"}, {"name": "b"}]},
            }
        )
        assert lamp.baud_rate == 38400  # the lamp's own default
        assert lamp.timeout == 1.0 and lamp.flow_control == "none"  # the transport's
        assert lamp.settings.intensity == 0.5
        assert lamp.parts() == ["a", "b"]
        assert [ref.id for ref in lamp.devices()] == ["lamp1", "lamp1_a", "lamp1_b"]
        assert lamp.simulator_options(1.0)["shutters"] == 2
        assert lamp.simulated and lamp.hardware == "sim://lamp?name=lamp1"

        with pytest.raises(ValidationError) as info:
            entry_class.model_validate(
                {"id": "lamp1", "driver": "lamp", "port": "/dev/ttyS0", "flow_control": "xonxoff"}
            )
        messages = [e["msg"] for e in info.value.errors()]
        assert any("Field required" in m for m in messages)  # the table has no default
        with pytest.raises(ValidationError, match="XOFF bytes"):
            entry_class.model_validate(
                {
                    "id": "lamp1",
                    "driver": "lamp",
                    "port": "/dev/ttyS0",
                    "flow_control": "xonxoff",
                    "lamp": {"shutters": [{"name": "a"}]},
                }
            )
    assert "lamp" not in registered_drivers()


def test_a_driver_module_declared_before_the_profile_is_read_is_a_profile_driver(tmp_path):
    """The whole path, in a fresh interpreter: the module registers itself, ``daqbridge.config``
    is imported after it and composes the schema; a profile naming the lamp loads, with its
    defaults and parts, and ``daqbridge.config`` was not edited."""
    (tmp_path / "lamp_driver.py").write_text(LAMP_MODULE, encoding="utf-8")
    script = textwrap.dedent(
        """
        import json
        import lamp_driver  # noqa: F401 - declares the lamp
        from daqbridge.config import DRIVERS, LEGACY_DRIVERS, SERIAL_DRIVERS, load_profile

        profile = load_profile('''
        [lab]
        name = "lamp lab"

        [[instruments]]
        id = "lamp1"
        driver = "lamp"
        port = "/dev/ttyS0"

        [instruments.lamp]
        shutters = [{ name = "left" }, { name = "right" }]
        ''')
        (lamp,) = profile.instruments
        print(json.dumps({
            "drivers": list(DRIVERS),
            "serial": "lamp" in SERIAL_DRIVERS,
            "legacy": "lamp" in LEGACY_DRIVERS,
            "class": type(lamp).__name__,
            "baud_rate": lamp.baud_rate,
            "intensity": lamp.lamp.intensity,
            "devices": profile.device_ids(),
        }))
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "drivers": [*DRIVERS[:-1], "lamp", "epics"],
        "serial": True,
        "legacy": False,
        "class": "LampInstrument",
        "baud_rate": 38400,
        "intensity": 0.5,
        "devices": ["lamp1", "lamp1_left", "lamp1_right"],
    }


def test_every_entry_but_epics_is_composed_from_its_drivers_declaration():
    assert list(INSTRUMENT_CLASSES) == list(DRIVERS)
    for driver, spec in DECLARED_DRIVERS.items():
        entry_class = INSTRUMENT_CLASSES[driver]
        assert entry_class.declared is spec
        assert entry_class.model_fields[driver].annotation is spec.settings
        assert ("legacy" in entry_class.model_fields) == (spec.legacy_twin is not None)
    assert INSTRUMENT_CLASSES["epics"].declared is None
    assert "epics" not in registered_drivers()


def test_config_names_no_declared_driver():
    """The leak this closes: ``daqbridge/config`` holds no entry class of a declared driver."""
    text = (ROOT / "daqbridge" / "config" / "_models.py").read_text(encoding="utf-8")
    for driver, spec in DECLARED_DRIVERS.items():
        title = spec.settings.__name__.removesuffix("Settings")
        assert f"class {title}Instrument" not in text, driver


def test_reading_a_profile_imports_no_module_that_declares_no_driver():
    """``known_drivers`` imports only modules with a ``register_driver(`` declaration: the EPICS
    clients (which import ophyd, about half a second) stay out of every command that merely
    reads a profile, while every declared driver is still found."""
    code = (
        "import sys, daqbridge.config\n"
        "from daqbridge.devices import known_drivers\n"
        "print('ophyd' in sys.modules, 'daqbridge.devices.epics' in sys.modules)\n"
        "print(' '.join(sorted(known_drivers())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out[0] == "False False"
    assert out[1].split() == sorted(d for d in DRIVERS if d != "epics")  # a client, not declared
