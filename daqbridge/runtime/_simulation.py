"""The simulators of a simulated lab profile, started and stopped by the runtime.

This is the ONLY runtime module that imports ``daqbridge.sim``, and it does so lazily (inside
:meth:`Simulation.start` and :meth:`Simulation.camera_backend`): a real lab never loads the
simulators, and the layering rule "sim is imported only by the CLI, the profiles and tests" has
one audited exception here, for ``[simulation] enabled = true`` profiles.

What it does for each simulated instrument that the profile starts:

* ``port = "pty"``: builds the simulator from the entry's ``sim`` table and serves it on a real
  pseudo-terminal; the entry's port becomes the pty's path (a stable symlink).
* ``port = "sim://KIND?name=NAME"``: creates the simulator and registers it as NAME, so every
  ``sim://`` open of that URL (the native driver and the legacy twin of a shadow instrument)
  reaches this one instance, built with the entry's ``sim`` options. A name already registered
  (a test or ``daqbridge sim serve`` made it) is attached to, not replaced. A URL without a name
  gets one, so both stacks still share one simulated instrument.
* ``resource = "sim-tcp"``: serves the SCPI model on 127.0.0.1 and substitutes its
  ``TCPIP0::127.0.0.1::PORT::SOCKET`` resource.
* ``pvcam.backend = "sim"``: :meth:`camera_backend` builds the simulated PVCAM backend (device
  code may not import ``daqbridge.sim``, so the runtime hands it over).
* ``[[couplings]]``: the power meter's optical input follows the laser's output power times
  ``factor`` (and, when a coupling names a rotation mount in ``via``, times Malus's law
  ``cos^2`` of that mount's angle), so a wavelength scan shows the laser's gain curve.
"""

from __future__ import annotations

import contextlib
import logging
import math
import urllib.parse
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daqbridge.config import (
    SIM_PORT,
    SIM_TCP_RESOURCE,
    InstrumentBase,
    Profile,
    PvcamInstrument,
    ScpiInstrument,
    SerialInstrument,
)
from daqbridge.errors import ConfigError

if TYPE_CHECKING:
    from daqbridge.config import Coupling

log = logging.getLogger("daqbridge.runtime.simulation")


def _sim_instruments(profile: Profile) -> list[InstrumentBase]:
    """Simulated entries the runtime will actually use (each once, shadow or not)."""
    used = {i.id for i in profile.native_instruments()} | {
        i.id for i in profile.legacy_instruments()
    }
    return [i for i in profile.enabled_instruments() if i.id in used and i.simulated]


class Simulation:
    """The simulators started for one runtime; :meth:`close` stops exactly those."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.speed = profile.simulation.speed
        self.simulators: dict[str, Any] = {}
        """Instrument id -> simulator object (serial simulator or SCPI model)."""
        self.ports: dict[str, str] = {}
        """Instrument id -> the port drivers open instead of the profile's (pty path, URL)."""
        self.resources: dict[str, str] = {}
        """Instrument id -> VISA resource replacing ``sim-tcp``."""
        self.servers: dict[str, Any] = {}
        self.transports: dict[str, str] = {}
        self.owned: dict[str, bool] = {}
        self.couplings: list[str] = []
        self._registered: dict[str, Any] = {}
        self._coupled_sinks: list[Any] = []
        self._stack = contextlib.ExitStack()
        self.closed = False

    # --- starting -------------------------------------------------------------------------

    @classmethod
    def start(cls, profile: Profile) -> Simulation:
        """Start every simulator the profile needs (importing ``daqbridge.sim`` registers the
        ``sim://`` URL handler, needed even when ``start_simulators`` is off)."""
        import daqbridge.sim  # noqa: F401 - registers the sim:// pyserial handler

        sim = cls(profile)
        try:
            if profile.simulation.start_simulators:
                for inst in _sim_instruments(profile):
                    sim._start_one(inst)
                for coupling in profile.couplings:
                    sim._couple(coupling)
        except BaseException:
            sim.close()
            raise
        return sim

    def _start_one(self, inst: InstrumentBase) -> None:
        if isinstance(inst, SerialInstrument):
            if inst.port == SIM_PORT:
                self._serve_pty(inst)
            elif inst.port.lower().startswith("sim://"):
                self._named_instance(inst)
        elif isinstance(inst, ScpiInstrument) and inst.resource == SIM_TCP_RESOURCE:
            self._serve_tcp(inst)
        # pyvisa-sim backends and the simulated camera need nothing running beforehand.

    def _serve_pty(self, inst: SerialInstrument) -> None:
        from daqbridge.sim import create_simulator, serve_pty

        simulator = create_simulator(inst.simulator_kind, **inst.simulator_options(self.speed))
        server = self._stack.enter_context(serve_pty(simulator))
        self.simulators[inst.id] = simulator
        self.servers[inst.id] = server
        self.ports[inst.id] = server.path
        self.transports[inst.id] = "pty"
        self.owned[inst.id] = True
        log.info("simulator %s (%s) served on %s", inst.id, inst.simulator_kind, server.path)

    def _named_instance(self, inst: SerialInstrument) -> None:
        from daqbridge.sim import create_simulator, lookup, register
        from daqbridge.sim.protocol_sim import parse_sim_url

        kind, name, url_options = parse_sim_url(inst.port)
        url = inst.port
        if name is None:
            # Without a name every open would build its own simulator: the two twins of a
            # shadow instrument would then talk to two different devices.
            name = f"{inst.id}-{uuid.uuid4().hex[:8]}"
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}name={urllib.parse.quote(name)}"
        existing = lookup(name, None)
        if existing is not None:
            if existing.kind != kind:
                raise ConfigError(
                    f"the simulator named {name!r} is a {existing.kind}, not a {kind}.",
                    instrument=inst.id,
                    resource=inst.port,
                    fix="give this entry's sim:// URL a name of its own.",
                )
            simulator, owned = existing, False
        else:
            options = inst.simulator_options(self.speed)
            options.update(url_options)  # the URL is the more specific place
            simulator = create_simulator(kind, **options)
            register(name, simulator)
            self._registered[name] = simulator
            owned = True
        self.simulators[inst.id] = simulator
        self.ports[inst.id] = url
        self.transports[inst.id] = "sim-url"
        self.owned[inst.id] = owned
        log.info(
            "simulator %s (%s) %s as %r", inst.id, kind, "created" if owned else "attached", name
        )

    def _serve_tcp(self, inst: ScpiInstrument) -> None:
        from daqbridge.sim import serve_tcp

        options: dict[str, Any] = {}
        if inst.sim is not None:
            options = inst.sim.simulator_options(default_speed=self.speed)
        options.pop("speed", None)  # SCPI replies are immediate; there is nothing to speed up
        try:
            server = self._stack.enter_context(serve_tcp(**options))
        except TypeError as exc:
            raise ConfigError(
                f"the SCPI simulator does not take these options: {exc}.",
                instrument=inst.id,
                key="sim.options",
                fix="see docs/simulators.md for the SCPI simulator's options.",
            ) from None
        self.simulators[inst.id] = server.model
        self.servers[inst.id] = server
        self.resources[inst.id] = server.resource
        self.transports[inst.id] = "tcp"
        self.owned[inst.id] = True
        log.info("SCPI simulator %s served at %s", inst.id, server.resource)

    # --- couplings ------------------------------------------------------------------------

    def _couple(self, coupling: Coupling) -> None:
        source = self.simulators.get(coupling.source)
        sink = self.simulators.get(coupling.sink)
        if source is None or sink is None:
            missing = coupling.source if source is None else coupling.sink
            note = (
                f"{coupling.source} -> {coupling.sink}: skipped ({missing} is not simulated here)"
            )
            self.couplings.append(note)
            log.warning("coupling %s", note)
            return
        factor = float(coupling.factor)
        transmission = self._rotator_transmission(getattr(coupling, "via", None))
        edge = self._edge_transmission(coupling)
        output = source.output_power_w

        def optical_input() -> float:
            return factor * output() * transmission() * edge()

        sink.optical_input = optical_input
        self._coupled_sinks.append(sink)
        via = getattr(coupling, "via", None)
        self.couplings.append(
            f"{coupling.sink} reads {coupling.source} x {factor:g}"
            + (f" x cos^2({via})" if via else "")
            + (f" x knife edge on {coupling.edge}" if coupling.edge else "")
        )

    def _edge_transmission(self, coupling: Coupling) -> Callable[[], float]:
        """Fraction of a Gaussian beam passing a knife edge carried by an ESP300 axis."""
        if not coupling.edge:
            return lambda: 1.0
        for inst in self.profile.enabled_instruments():
            if inst.driver != "esp300":
                continue
            for axis in inst.esp300.axes:
                if f"{inst.id}_{axis.name}" == coupling.edge:
                    controller = self.simulators.get(inst.id)
                    if controller is None:
                        raise ConfigError(
                            f"coupling edge {coupling.edge!r}: the ESP300 {inst.id!r} is not "
                            "simulated.",
                            key="couplings.edge",
                            fix="simulate the stage too, or remove 'edge'.",
                        )
                    return _knife_edge(
                        controller,
                        axis.number,
                        coupling.edge_position,
                        math.sqrt(2.0) / coupling.edge_width,
                    )
        raise ConfigError(
            f"coupling edge {coupling.edge!r} is not an ESP300 axis of this profile.",
            key="couplings.edge",
            fix="name an axis as <instrument id>_<axis name>, e.g. sim_stage_x.",
        )

    def _rotator_transmission(self, via: str | None) -> Callable[[], float]:
        """Malus's law through the named Elliptec mount (device id), or 1 without one."""
        if not via:
            return lambda: 1.0
        for inst in self.profile.enabled_instruments():
            if inst.driver != "elliptec":
                continue
            for addr in inst.elliptec.addresses:
                if f"{inst.id}_{addr.device_name}" == via:
                    bus = self.simulators.get(inst.id)
                    if bus is None:
                        raise ConfigError(
                            f"coupling via {via!r}: the Elliptec bus {inst.id!r} is not simulated.",
                            key="couplings.via",
                            fix="simulate the bus too, or remove 'via'.",
                        )
                    address = addr.address
                    return lambda: math.cos(math.radians(bus.position_deg(address))) ** 2
        raise ConfigError(
            f"coupling via {via!r} is not an Elliptec mount of this profile.",
            key="couplings.via",
            fix="name a mount as <instrument id>_<name>, e.g. sim_rotators_c.",
        )

    # --- for the builders -----------------------------------------------------------------

    def port_for(self, inst: InstrumentBase) -> str | None:
        return self.ports.get(inst.id)

    def resource_for(self, inst: InstrumentBase) -> str | None:
        return self.resources.get(inst.id)

    def camera_backend(self, inst: PvcamInstrument) -> Any:
        """A simulated PVCAM backend that enumerates the profile's camera name."""
        from daqbridge.sim.pvcam import SimulatedCameraBackend

        backend = SimulatedCameraBackend(camera_names=(inst.camera,), speed=self.speed)
        self.simulators[inst.id] = backend
        self.transports[inst.id] = "backend"
        self.owned[inst.id] = True
        return backend

    def simulator(self, instrument_id: str) -> Any:
        """The simulator behind an instrument (KeyError names the simulated ones)."""
        try:
            return self.simulators[instrument_id]
        except KeyError:
            raise KeyError(
                f"no simulator for {instrument_id!r}; simulated: {', '.join(self.simulators)}"
            ) from None

    # --- status and stopping --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for iid, simulator in self.simulators.items():
            server = self.servers.get(iid)
            entry: dict[str, Any] = {
                "kind": getattr(simulator, "kind", type(simulator).__name__),
                "transport": self.transports.get(iid),
                "address": self.ports.get(iid) or self.resources.get(iid),
                "owned": self.owned.get(iid, False),
            }
            if hasattr(simulator, "received_lines"):
                entry["lines_received"] = len(simulator.received_lines)
            if hasattr(simulator, "connected"):
                entry["plugged"] = bool(simulator.connected)
            if server is not None and hasattr(server, "errors"):
                entry["errors"] = [repr(e) for e in server.errors]
            if server is not None and hasattr(server, "connection_count"):
                entry["connections"] = server.connection_count
            out[iid] = entry
        return {
            "speed": self.speed,
            "closed": self.closed,
            "instruments": out,
            "couplings": list(self.couplings),
        }

    def close(self) -> None:
        """Stop the servers this runtime started and forget the names it registered."""
        if self.closed:
            return
        self.closed = True
        for sink in self._coupled_sinks:
            sink.optical_input = None
        self._coupled_sinks.clear()
        try:
            self._stack.close()
        finally:
            if self._registered:
                from daqbridge.sim import lookup, unregister

                for name, simulator in self._registered.items():
                    if lookup(name, None) is simulator:
                        unregister(name)
                self._registered.clear()


def _knife_edge(controller: Any, axis: int, centre: float, scale: float) -> Callable[[], float]:
    """Transmission past a knife edge on ``axis``: 0.5 erfc(scale (x - centre))."""

    def passed() -> float:
        return 0.5 * math.erfc(scale * (controller.axis_position(axis) - centre))

    return passed
