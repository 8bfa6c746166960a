"""Wire-level simulators of every instrument of the lab (see docs/simulators.md)."""

from daqbridge.sim._core import Faults, SerialSimulator

__all__ = ["Faults", "SerialSimulator"]
