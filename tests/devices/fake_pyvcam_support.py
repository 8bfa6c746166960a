"""The fake ``pyvcam`` (tests/devices/fake_pyvcam) made importable for one test, then forgotten.

The ``pvc`` fixture (tests/devices/conftest.py) is built on :func:`fake_pyvcam`; tests outside
tests/devices (the profile's property tests of the camera's table) use the context manager
directly. Nothing but tests may put the fake on the path.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

FAKE_ROOT = Path(__file__).with_name("fake_pyvcam")
"""The directory holding the fake ``pyvcam`` package."""


def forget_pyvcam() -> None:
    """Drop every ``pyvcam`` module imported so far, so the next import finds the path's one."""
    for name in [m for m in sys.modules if m == "pyvcam" or m.startswith("pyvcam.")]:
        del sys.modules[name]


@contextlib.contextmanager
def fake_pyvcam() -> Iterator[ModuleType]:
    """The fake importable as ``pyvcam`` (its SDK reset) inside the block; yields its ``pvc``
    (``pvc.sdk``, ``pvc.calls``). Afterwards the path and the imported modules are as before."""
    forget_pyvcam()
    sys.path.insert(0, str(FAKE_ROOT))
    try:
        from pyvcam import pvc

        pvc.sdk.reset()
        yield pvc
    finally:
        sys.path.remove(str(FAKE_ROOT))
        forget_pyvcam()


def names(calls: list[tuple]) -> list[str]:
    """The names of the calls the fake recorded (``pvc.calls``), in order."""
    return [c[0] for c in calls]
