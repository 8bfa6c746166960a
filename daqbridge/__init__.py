"""daqbridge: legacy and native instrument drivers under one RunEngine, on shared hardware."""

import atexit
import gc

__version__ = "0.1.0"


def _freeze_before_teardown() -> None:
    """Spare the interpreter's teardown its garbage-collection passes over the whole stack.

    Registered at the first import of daqbridge, so it runs after every exit handler registered
    later (the runtime's, the catalog's, ophyd's): by then every port, file and catalog has been
    shut down in order. What is left are the half-million objects of tiled, pandas, dask and
    matplotlib, which die with the process; the teardown would walk them in several full
    collections, 1-2 s at the end of a one-second ``daqbridge run`` on a loaded two-core machine.
    Frozen objects are skipped by those passes.
    """
    gc.freeze()


atexit.register(_freeze_before_teardown)
