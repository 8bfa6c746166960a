"""daqbridge: legacy and native instrument drivers under one RunEngine, on shared hardware."""

__version__ = "0.1.0"
