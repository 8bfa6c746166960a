"""What a process pays for: no EPICS client without EPICS devices, a quick exit.

Each test runs a fresh interpreter (what was imported, and what runs at exit, belong to one
process) and reads one JSON line it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 180.0  # a cold import of the whole stack on two loaded cores


def _child(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a new interpreter; the JSON object it printed last."""
    base = {k: v for k, v in os.environ.items() if k != "OPHYD_CONTROL_LAYER"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_cli_imports_no_bluesky_ophyd_or_tiled():
    """`daqbridge sim serve`, `config check`, `--help` start without the heavy stack."""
    seen = _child(
        """
        import json, sys
        import daqbridge.cli
        heavy = ("bluesky", "ophyd", "caproto", "tiled", "pandas", "matplotlib")
        print(json.dumps({"imported": [m for m in heavy if m in sys.modules]}))
        """
    )
    assert seen["imported"] == []


def test_reading_the_catalog_imports_no_writer():
    """`catalog list` and the other readers import the catalog package: bluesky-tiled-plugins'
    writer (its schema validators, xarray: about a second) is the writer's alone."""
    seen = _child(
        """
        import json, sys
        import daqbridge.catalog
        import daqbridge.cli._catalog
        heavy = ("bluesky_tiled_plugins", "xarray", "tiled.server")
        print(json.dumps({"imported": [m for m in heavy if m in sys.modules]}))
        """
    )
    assert seen["imported"] == []


def test_a_lab_without_epics_devices_starts_no_epics_client():
    """The start-up checks of the simulated lab import every native driver (and ophyd), and
    the lab's soft signals work; caproto is neither imported nor started."""
    seen = _child(
        """
        import json, sys, threading
        from daqbridge.runtime._builders import check_native_driver
        from daqbridge.config import load_profile

        profile = load_profile(None)
        for inst in profile.native_instruments():
            check_native_driver(inst)
        import ophyd

        soft = ophyd.Signal(name="soft", value=1.0)
        seen = []
        soft.subscribe(lambda value, **kw: seen.append(value), run=False)
        soft.put(2.0)
        print(json.dumps({
            "drivers": sorted({inst.driver for inst in profile.native_instruments()}),
            "caproto": sorted(m for m in sys.modules if m.split(".")[0] == "caproto"),
            "threads": sorted(t.name for t in threading.enumerate()),
            "values": seen,
        }))
        """
    )
    assert "epics" not in seen["drivers"] and len(seen["drivers"]) >= 4, seen["drivers"]
    assert seen["values"] == [2.0]
    assert seen["caproto"] == [], (seen["caproto"][:5], seen["threads"])


def test_a_control_layer_the_user_chose_is_kept():
    """OPHYD_CONTROL_LAYER set by the user: ophyd's own choice, as without daqbridge."""
    seen = _child(
        """
        import json
        import daqbridge.devices.esp300
        import ophyd
        print(json.dumps({"layer": ophyd.get_cl().name}))
        """,
        env={"OPHYD_CONTROL_LAYER": "caproto"},
    )
    assert seen["layer"] == "caproto"


def test_the_import_leaves_no_control_layer_in_the_environment():
    """The dummy layer is chosen for ophyd's import only: a subprocess of the lab (an IOC, a
    worker) must not inherit it."""
    seen = _child(
        """
        import json, os
        import daqbridge.devices.esp300
        print(json.dumps({"variable": os.environ.get("OPHYD_CONTROL_LAYER")}))
        """
    )
    assert seen["variable"] is None


def test_the_first_epics_pv_starts_the_client():
    """An EPICS signal made after the lab's devices were imported connects, reads, writes and
    reports its connection through the real client (here caproto)."""
    from daqbridge.ioc import free_port, loopback_ca_env

    server, repeater = free_port(), free_port()
    while repeater == server:
        repeater = free_port()
    seen = _child(
        """
        import asyncio, json, sys, threading
        import daqbridge.devices.esp300  # ophyd through daqbridge: the client is asleep
        import ophyd

        asleep = "caproto" not in sys.modules

        from caproto.asyncio.server import Context
        from caproto.server import PVGroup, pvproperty

        class Bench(PVGroup):
            power = pvproperty(value=1.5, name="power")

        ready = threading.Event()

        async def started(async_lib):
            ready.set()

        async def serve():
            ioc = Context(Bench(prefix="DQIMP:").pvdb, ["127.0.0.1"])
            await ioc.run(startup_hook=started)

        threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
        assert ready.wait(60), "the test IOC did not start"

        signal = ophyd.EpicsSignal("DQIMP:power", name="power")
        connected = threading.Event()

        def meta(**metadata):
            if metadata.get("connected"):
                connected.set()

        signal.subscribe(meta, event_type=signal.SUB_META, run=False)
        signal.wait_for_connection(timeout=60)
        first = signal.get(timeout=30)
        signal.put(2.5, wait=True, timeout=30)
        print(json.dumps({
            "asleep_before": asleep,
            "layer": ophyd.get_cl().name,
            "signal_layer": signal.cl.name,
            "connected_callback": connected.wait(60),
            "values": [first, signal.get(use_monitor=False, timeout=30)],
        }))
        """,
        env=loopback_ca_env(server, repeater),
    )
    assert seen["asleep_before"] is True
    assert (seen["layer"], seen["signal_layer"]) == ("caproto", "caproto")
    assert seen["connected_callback"] is True
    assert seen["values"] == [1.5, 2.5]


def test_interpreter_teardown_skips_the_stack_objects():
    """After the exit handlers, the objects left are frozen, so the teardown's collections skip
    them (the exit of `daqbridge run` is timed in benchmarks/bench_daily.py)."""
    seen = _child(
        """
        import atexit, gc, json

        # registered before daqbridge's handler, so it runs after it
        atexit.register(lambda: print(json.dumps({"frozen": gc.get_freeze_count()}), flush=True))
        import daqbridge.catalog
        """
    )
    assert seen["frozen"] > 0
