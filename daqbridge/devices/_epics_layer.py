"""ophyd's EPICS client, started at the first PV instead of at ``import ophyd``.

A module of its own, importing nothing of ophyd: :mod:`daqbridge.devices` installs the deferral
right after ophyd's own ``__init__`` has run, which may happen while a driver module (the
``epics`` one) is itself being imported; a module that imported ophyd at its top would then be
only half initialised (:mod:`daqbridge.devices.epics` re-exports :func:`defer_epics_client`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["defer_epics_client"]

log = logging.getLogger("daqbridge.devices.epics")


class _DeferredThreadContext:
    """Where ophyd runs a signal's metadata callbacks (its dispatcher's ``monitor`` thread).

    Before the client runs there is no dispatcher thread: the callback runs in the caller's
    thread, as ophyd does on its own thread. Afterwards it goes to the real dispatcher, so a
    signal made before the first PV (every soft signal of the lab) behaves as stock ophyd then.
    """

    def __init__(self, layer: _DeferredControlLayer, name: str) -> None:
        self._layer = layer
        self._name = name

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        real = self._layer.running()
        if real is None:
            return func(*args, **kwargs)
        return real.get_dispatcher().get_thread_context(self._name).run(func, *args, **kwargs)

    __call__ = run


class _DeferredDispatcher:
    def __init__(self, layer: _DeferredControlLayer) -> None:
        self._layer = layer

    def get_thread_context(self, name: str) -> _DeferredThreadContext:
        return _DeferredThreadContext(self._layer, name)

    def is_alive(self) -> bool:
        real = self._layer.running()
        return real is not None and real.get_dispatcher().is_alive()

    def stop(self) -> None:
        real = self._layer.running()
        if real is not None:
            real.get_dispatcher().stop()


class _DeferredControlLayer:
    """ophyd's control-layer interface that starts the real one at the first PV.

    ``ophyd.set_cl()`` then picks the layer exactly as ``import ophyd`` would have (pyepics if
    installed, else caproto) and becomes ``ophyd.cl``; signals made earlier keep this object as
    their ``cl`` and are forwarded.
    """

    thread_class = threading.Thread

    def __init__(self, ophyd: ModuleType) -> None:
        self._ophyd = ophyd
        self._lock = threading.Lock()
        self._dispatcher = _DeferredDispatcher(self)

    @property
    def name(self) -> str:
        real = self.running()
        return real.name if real is not None else "deferred"

    def running(self) -> Any:
        """The real control layer once started (or chosen with ``ophyd.set_cl``), else None."""
        current = self._ophyd.cl
        return None if current is self else current

    def start(self) -> Any:
        with self._lock:
            if self._ophyd.cl is self:
                self._ophyd.set_cl()
                log.debug("EPICS client started: ophyd control layer %s", self._ophyd.cl.name)
            return self._ophyd.cl

    def setup(self, logger: logging.Logger) -> _DeferredDispatcher:
        return self._dispatcher

    def get_dispatcher(self) -> _DeferredDispatcher:
        return self._dispatcher

    def get_pv(self, *args: Any, **kwargs: Any) -> Any:
        return self.start().get_pv(*args, **kwargs)

    def release_pvs(self, *args: Any, **kwargs: Any) -> Any:
        return self.start().release_pvs(*args, **kwargs)

    def caget(self, *args: Any, **kwargs: Any) -> Any:
        return self.start().caget(*args, **kwargs)

    def caput(self, *args: Any, **kwargs: Any) -> Any:
        return self.start().caput(*args, **kwargs)


def defer_epics_client(ophyd: ModuleType) -> None:
    """Make ``ophyd`` (imported with its ``dummy`` layer) start its EPICS client at the first PV.

    Called by :mod:`daqbridge.devices` right after it imports ophyd; a layer someone chose
    already (``ophyd.set_cl``) is left alone.
    """
    if getattr(ophyd.cl, "name", None) == "dummy":
        ophyd.cl = _DeferredControlLayer(ophyd)
