"""The simulated lab on both driver stacks through the IOC, as a Channel Access client sees it.

Two runtimes run in this process: one with every instrument on the native stack, one with the
instruments that have a legacy driver on the legacy stack (copies of the embedded profile with the
``stack`` of those entries edited). Each is served by its own LabIOC under its own prefix, from one
caproto server on a port of this module, and read by caproto's threading client on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import tomllib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from daqbridge.config import LEGACY_DRIVERS
from daqbridge.ioc import LabIOC, free_port, loopback_ca_env

SIM_PROFILE = Path(__file__).parents[2] / "daqbridge" / "profiles" / "sim.toml"
PREFIXES = {"native": "STN:", "legacy": "STL:"}
START_TIMEOUT = 120.0  # two simulated labs start on 2 shared cores
CA_TIMEOUT = 20.0


@dataclass
class Served:
    stack: str
    runtime: Any
    ioc: LabIOC | None = None
    client: Any = None

    @property
    def prefix(self) -> str:
        return self.ioc.prefix

    def devices(self) -> dict[str, Any]:
        """The devices this stack built, ophyd v1 or ophyd-async (an Elliptec bus of the native
        stack is neither: its mounts are the devices)."""
        from ophyd import Device

        from daqbridge.devices.core import is_async_device

        return {
            i: d
            for i, d in self.runtime.devices.items()
            if isinstance(d, Device) or is_async_device(d)
        }


def _profile(stack: str, directory: Path) -> Path:
    """sim.toml with the stack of its entries edited; the legacy copy keeps only the entries
    that have a legacy driver (the others are the same on both stacks)."""
    data = tomllib.loads(SIM_PROFILE.read_text())
    kept = []
    for entry in data["instruments"]:
        if stack == "native":
            entry["stack"] = "native"
        elif entry["driver"] in LEGACY_DRIVERS:
            entry["stack"] = "legacy"
            # sim:// names one simulator per process, and the native lab runs here too
            entry["port"] = entry["port"].replace("name=", "name=legacy_")
        else:
            continue
        kept.append(entry)
    data["instruments"] = kept
    if stack == "legacy":
        data.pop("couplings")  # they name instruments left out of this copy
    path = directory / f"{stack}.toml"
    path.write_text(tomlkit.dumps(data))
    return path


class _Server:
    """One caproto server for several LabIOCs, on its own event loop thread."""

    def __init__(self, iocs: list[LabIOC]) -> None:
        self.iocs = iocs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ioc-stacks")
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(START_TIMEOUT)

    async def _start(self) -> None:
        from caproto.asyncio.server import Context

        pvdb: dict[str, Any] = {}
        for ioc in self.iocs:
            await ioc.prime()
            self.tasks.append(asyncio.create_task(ioc.pusher.run()))
            pvdb.update(ioc.pvdb)
        listening = asyncio.Event()

        async def hook(async_lib: Any) -> None:
            listening.set()

        context = Context(pvdb, ["127.0.0.1"])
        self.tasks.append(asyncio.create_task(context.run(startup_hook=hook)))
        await asyncio.wait_for(listening.wait(), START_TIMEOUT)

    def stop(self) -> None:
        async def cancel() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    from caproto.threading.client import Context

    from daqbridge.runtime import Runtime

    directory = tmp_path_factory.mktemp("stacks")
    server_port, repeater_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DAQBRIDGE_DATA", raising=False)
        for key, value in loopback_ca_env(server_port, repeater_port).items():
            mp.setenv(key, value)
        served: dict[str, Served] = {}
        server = None
        try:
            for stack, prefix in PREFIXES.items():
                runtime = Runtime.from_profile(
                    _profile(stack, directory), data_dir=directory / stack, connect_timeout=30
                )
                served[stack] = Served(stack, runtime)
                served[stack].ioc = LabIOC.from_runtime(runtime, prefix=prefix, poll_period=0)
            server = _Server([s.ioc for s in served.values()])
            server.start()
            client = Context()
            for s in served.values():
                s.client = client
            yield served
            client.disconnect()
        finally:
            if server is not None:
                server.stop()
            for s in served.values():
                if s.ioc is not None:
                    s.ioc.close()
                s.runtime.close(reason="test done")


def _connected(served: Served, names: list[str]) -> dict[str, Any]:
    """PV name -> connected caproto PV, or None when the IOC does not serve it (one deadline
    for all of them)."""
    pvs = served.client.get_pvs(*names, timeout=CA_TIMEOUT)
    deadline = time.monotonic() + CA_TIMEOUT
    out: dict[str, Any] = {}
    for pv in pvs:
        try:
            pv.wait_for_connection(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            out[pv.name] = None
        else:
            out[pv.name] = pv
    return out


def _access(served: Served, names: list[str]) -> dict[str, str]:
    """PV name -> 'rw', 'ro' or 'missing', as the CA client is told at connection."""
    from caproto import AccessRights

    return {
        name: "missing"
        if pv is None
        else ("rw" if AccessRights.WRITE in pv.access_rights else "ro")
        for name, pv in _connected(served, names).items()
    }


def _text(pv: Any) -> str:
    return bytes(pv.read(timeout=CA_TIMEOUT).data).rstrip(b"\0").decode()


@dataclass(frozen=True)
class _AsyncSignal:
    """An ophyd-async signal as the walk sees it: writable when its type is ``SignalW``."""

    signal: Any
    write_access: bool

    @property
    def name(self) -> str:
        return str(self.signal.name)

    def describe(self) -> dict[str, Any]:
        from daqbridge.devices.core import call_sync

        return call_sync(self.signal.describe(), timeout=CA_TIMEOUT)


def _async_signals(
    obj: Any, path: str = "", elsewhere: Collection[int] = ()
) -> Iterator[tuple[str, Any]]:
    """Every signal below an ophyd-async device that it reads or configures (the omitted ones,
    such as the laser's ``commanded`` target, are neither), but not those of a part in
    ``elsewhere`` (ids of the devices the lab addresses by their own ids: an ESP300's axes)."""
    from ophyd_async.core import Device, SignalR, SignalW

    from daqbridge.ioc._async import _kinds_of

    kinds = _kinds_of(obj)
    for attr, child in obj.children():
        name = f"{path}{attr}"
        if isinstance(child, SignalR):
            if kinds[id(child)].name != "omitted":
                yield name, _AsyncSignal(child, isinstance(child, SignalW))
        elif isinstance(child, Device) and id(child) not in elsewhere:
            yield from _async_signals(child, f"{name}.", elsewhere)


def _signals(
    obj: Any, path: str = "", elsewhere: Collection[int] = ()
) -> Iterator[tuple[str, Any]]:
    """Every ophyd signal below ``obj`` that a device reads or configures (not omitted)."""
    from ophyd import Device, Kind, Signal

    from daqbridge.devices.core import is_async_device

    if is_async_device(obj):
        yield from _async_signals(obj, path, elsewhere)
        return
    for attr in getattr(obj, "component_names", ()):
        child = getattr(obj, attr)
        name = f"{path}{attr}"
        if isinstance(child, Device):
            yield from _signals(child, f"{name}.", elsewhere)
        elif isinstance(child, Signal) and child.kind != Kind.omitted:
            yield name, child


def _source(sig: Any) -> str:
    return str(sig.describe()[sig.name].get("source") or "")


def _served_signals(served: Served) -> dict[str, tuple[str, bool]]:
    """Where the IOC says it serves each signal, from ``<P>ioc:Devices`` and each device's
    ``:Layout`` read over CA: "<device>.<signal>" and the signal's source -> (PV, writable)."""
    p = served.prefix
    (summary,) = _connected(served, [f"{p}ioc:Devices"]).values()
    device_ids = json.loads(_text(summary))["devices"]
    out: dict[str, tuple[str, bool]] = {}
    for pv in _connected(served, [f"{p}{d}:Layout" for d in device_ids]).values():
        if pv is None:
            continue
        layout = json.loads(_text(pv))
        entries = {**layout["signals"], **layout.get("record_signals", {})}
        for attr, suffix in layout.get("motors", {}).items():
            entries.setdefault(attr, {"pv": suffix, "writable": True})
        for attr, entry in entries.items():
            where = (f"{layout['prefix']}{entry['pv']}", entry["writable"])
            out[f"{layout['id']}.{attr}"] = where
            if entry.get("source"):
                out[entry["source"]] = where
    return out


@pytest.mark.parametrize("stack", PREFIXES)
def test_every_setting_is_writable_and_every_reading_read_only_over_ca(stacks, stack):
    served = stacks[stack]
    index = _served_signals(served)
    checked: dict[str, tuple[str, bool]] = {}  # "<device>.<signal>" -> (PV, signal writable)
    problems: dict[str, str] = {}
    devices = served.devices()
    # the runtime's devices are the entries and the parts their drivers declare (DriverSpec.parts)
    served_alone = {id(device) for device in devices.values()}
    for device_id, device in devices.items():
        for path, sig in _signals(device, elsewhere=served_alone - {id(device)}):
            where = index.get(f"{device_id}.{path}") or index.get(_source(sig))
            if where is not None:
                checked[f"{device_id}.{path}"] = (where[0], bool(sig.write_access))
            elif sig.write_access:
                problems[f"{device_id}.{path}"] = "a setting, not served"
            # else: a reading the record shows itself (a positioner's setpoint is its VAL)
    access = _access(served, sorted({pv for pv, _ in checked.values()}))
    for name, (pv, writable) in checked.items():
        if access[pv] != ("rw" if writable else "ro"):
            problems[name] = f"{'a setting' if writable else 'a reading'}, {pv} is {access[pv]}"
    assert not problems, f"access over CA differs from the signal's type: {problems}"
    # the walk saw the lab: settings and readings of every driver of this stack
    drivers = {i.driver for i in served.runtime.profile.instruments}
    assert len(checked) > 3 * len(drivers)
    assert any(w for _, w in checked.values()) and not all(w for _, w in checked.values())


def _device_of(pv: str, prefix: str) -> str:
    return re.split(r"[:.]", pv[len(prefix) :], maxsplit=1)[0]


ON_BOTH_STACKS = ("sim_laser", "sim_meter", "sim_rotators")
"""The instruments with a native and a legacy driver: the MaiTai, the 1830-C, the Elliptec bus."""


def test_pv_names_and_access_do_not_depend_on_the_stack(stacks):
    """Every PV of the laser, the meter and the Elliptec bus (its mounts' motor records with
    all their fields included), and the access a CA client is given to each, are the same
    whether those instruments run on the native or the legacy stack (issue 18, item 6)."""
    native, legacy = stacks["native"], stacks["legacy"]
    seen = {}
    for s in (native, legacy):
        names = [n for n in s.ioc.pv_names() if _device_of(n, s.prefix).startswith(ON_BOTH_STACKS)]
        seen[s.stack] = {n[len(s.prefix) :]: a for n, a in _access(s, names).items()}
    assert "missing" not in seen["native"].values()
    # the list covers what the lab moves and measures on these instruments
    for pv in ("sim_laser:shutter", "sim_laser:emission", "sim_rotators_c:velocity"):
        assert seen["native"].get(pv) == "rw", pv
    for pv in ("sim_laser:power", "sim_meter:power", "sim_rotators_c.RBV"):
        assert seen["native"].get(pv) == "ro", pv
    only = {
        stack: sorted(seen[stack].keys() - seen[other].keys())
        for stack, other in (("native", "legacy"), ("legacy", "native"))
    }
    assert only == {"native": [], "legacy": []}, f"PVs served on one stack only: {only}"
    differs = {n: (a, seen["legacy"][n]) for n, a in seen["native"].items()}
    differs = {n: a for n, a in differs.items() if a[0] != a[1]}
    assert not differs, f"(native, legacy) access differs: {differs}"
    kinds = {
        s.stack: {d: k for d, k in s.ioc.kinds.items() if d.startswith(ON_BOTH_STACKS)}
        for s in (native, legacy)
    }
    assert kinds["native"] == kinds["legacy"]


MOTORS = {  # record -> (the profile's limits, a target just outside them)
    "sim_laser:wavelength": ((700.0, 1000.0), 1020.0),
    "sim_rotators_c": ((-90.0, 90.0), 95.0),
}


def _simulated_target(served: Served, record: str) -> float:
    """Where the simulator was last told to go (not what the driver believes)."""
    sims = served.runtime.simulation.simulators
    if record.startswith("sim_laser"):
        return sims["sim_laser"].target_wavelength_nm()
    return sims["sim_rotators"].position_deg(8)


def _get(served: Served, name: str, **kwargs: Any) -> Any:
    (pv,) = served.client.get_pvs(name, timeout=CA_TIMEOUT)
    pv.wait_for_connection(timeout=CA_TIMEOUT)
    return pv.read(timeout=CA_TIMEOUT, **kwargs)


@pytest.mark.parametrize("record", MOTORS)
@pytest.mark.parametrize("stack", PREFIXES)
def test_motor_limits_are_the_profiles(stacks, stack, record):
    from caproto import ChannelType

    served = stacks[stack]
    (low, high), _ = MOTORS[record]
    pv = f"{served.prefix}{record}"
    shown = (_get(served, f"{pv}.LLM").data[0], _get(served, f"{pv}.HLM").data[0])
    ctrl = _get(served, pv, data_type=ChannelType.CTRL_DOUBLE).metadata
    assert shown == (low, high)
    assert (ctrl.lower_ctrl_limit, ctrl.upper_ctrl_limit) == (low, high)


@pytest.mark.parametrize("record", MOTORS)
@pytest.mark.parametrize("stack", PREFIXES)
def test_a_put_outside_the_limits_is_refused_and_sets_lvio(stacks, stack, record):
    from caproto import ErrorResponseReceived
    from caproto.sync.client import write

    served = stacks[stack]
    _, outside = MOTORS[record]
    pv = f"{served.prefix}{record}"
    here = _get(served, f"{pv}.RBV").data[0]
    write(pv, [here], notify=True, repeater=False, timeout=CA_TIMEOUT)  # an accepted move
    assert _get(served, f"{pv}.LVIO").data[0] == 0
    before = _simulated_target(served, record)
    with pytest.raises(ErrorResponseReceived):
        write(pv, [outside], notify=True, repeater=False, timeout=CA_TIMEOUT)
    assert _get(served, f"{pv}.LVIO").data[0] == 1
    assert _get(served, f"{pv}.DMOV").data[0] == 1
    assert _simulated_target(served, record) == before  # nothing reached the instrument


@pytest.mark.parametrize("stack", PREFIXES)
def test_the_shutter_closes_over_ca_and_its_pv_shows_the_lasers_report(stacks, stack):
    from caproto.sync.client import write

    served = stacks[stack]
    laser = served.runtime.simulation.simulators["sim_laser"]
    pv = f"{served.prefix}sim_laser:shutter"
    assert laser.shutter_open
    try:
        write(pv, [0], notify=True, repeater=False, timeout=CA_TIMEOUT)
        assert laser.shutter_open is False  # the laser itself closed it
        assert _get(served, pv).data[0] == 0
    finally:
        write(pv, [1], notify=True, repeater=False, timeout=CA_TIMEOUT)
    assert laser.shutter_open is True
